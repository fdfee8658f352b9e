"""A python host's stdout or stderr, cut into calls (`host_process` reads them).

After each call it ran, the host writes a marker, its token (TOKEN_BYTES random bytes the
worker chose for it) and the call number (4 bytes, big-endian), to both streams, before
its answer (`python_host`): what came before a marker, since the one before, is that
call's output, whoever wrote it (the action, `os.write`, a child process).
"""

from __future__ import annotations

from attune_pg.actions.process import Capture

#: How much of the action's stdout and stderr (each, last bytes) a call keeps.
OUTPUT_TAIL_BYTES = 64 * 1024
#: Bytes of a host's marker token (a marker adds the call number: 4 more).
TOKEN_BYTES = 16


def empty_output() -> Capture:
    return Capture(OUTPUT_TAIL_BYTES, "tail")


class Stream:
    """A host's stdout or stderr, cut into calls at the markers."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self.carry = b""  # the end of what was read, which may be the start of a marker
        self.segment = empty_output()  # since the last marker

    def feed(self, data: bytes) -> list[tuple[int, Capture]]:
        """Take `data`; each call whose marker it completes, with that call's output."""
        if self.carry:
            data, self.carry = self.carry + data, b""
        cuts: list[tuple[int, Capture]] = []
        at = 0
        while (found := data.find(self.token, at)) >= 0:
            end = found + TOKEN_BYTES + 4
            if end > len(data):
                break
            if found > at:
                self.segment.add(data[at:found])
            cuts.append((int.from_bytes(data[found + TOKEN_BYTES : end], "big"), self.segment))
            self.segment = empty_output()
            at = end
        keep = TOKEN_BYTES + 3  # what may be the start of a marker stays for the next read
        if len(data) - at > keep:
            self.segment.add(data[at : len(data) - keep])
            at = len(data) - keep
        self.carry = data[at:]
        return cuts

    def rest(self) -> Capture:
        """At the end: what follows the last marker (the output of the call that ran)."""
        if self.carry:
            self.segment.add(self.carry)
            self.carry = b""
        rest, self.segment = self.segment, empty_output()
        return rest
