"""Action runners. `attune_pg.actions.runners.run_action` runs one attempt of an action.

This package's own module stays empty: every python host imports it on its way to
`attune_pg.actions.python_host`, and what it imported would be each host's start-up cost.
"""
