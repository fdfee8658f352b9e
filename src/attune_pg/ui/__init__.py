"""The web console (`attune-pg ui`): see and steer executions in a browser."""
