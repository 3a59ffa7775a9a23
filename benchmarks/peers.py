"""What the comparison scripts share: the check of a peer library's interpreter, the
peer's process kept up between samples, and the ``--json`` file.

The peers (torch with torchdiffeq or torchdeq, JAX with diffrax) live in a
scratch virtualenv and are never dependencies; each ``compare_*`` script runs
its peer's side in that interpreter.
"""

import subprocess
import sys


def check_interpreter(flag, python, modules):
    """Exits with one line unless ``python`` runs and imports ``modules`` (checked before
    the TensorFlow side spends minutes)."""
    try:
        result = subprocess.run([python, "-c", f"import {modules}"], capture_output=True,
                                text=True)
    except OSError as error:
        sys.exit(f"{flag}={python!r}: cannot run it ({error.strerror})")
    if result.returncode:
        last = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        sys.exit(f"{flag}={python!r}: cannot import {modules} ({last})")


class PeerProcess:
    """A peer's side kept up between samples, so that samples alternate between the sides
    (each waits while the other runs). It speaks JSON lines: its first ``{...}`` line once
    it is warm (``info``), then one line per request written to its stdin. Its stderr goes
    to ``stderr_path``; if it dies, the run exits with the end of that file."""

    def __init__(self, name, argv, stderr_path):
        self.name = name
        self.stderr = open(stderr_path, "w+")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True)
        self.info = self.read()

    def read(self, request=None):
        """The next JSON line, after sending ``request`` (a line) if given."""
        import json

        if request:
            self.proc.stdin.write(request + "\n")
            self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.stderr.seek(0)
        sys.exit(f"The {self.name} side failed:\n{self.stderr.read()[-3000:]}")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        self.stderr.close()


#: Untimed work before a side's timed samples: a process that waited while the other side
#: ran is about 2x slower for its first tens of milliseconds (a 4 ms graph loop right after
#: 0.2 s of sleep: 16.7 against 8.5 us per iteration; TensorFlow's graph executor suffers
#: more than XLA).
WARM_SECONDS = 0.1


def warm_up(call, seconds=WARM_SECONDS):
    """Runs ``call()`` untimed, at least once and until ``seconds`` have passed."""
    import time

    start = time.perf_counter()
    call()
    while time.perf_counter() - start < seconds:
        call()


def write_json(path, data):
    """``data`` as indented JSON at ``path``, written atomically (a file of the user's is
    whole or untouched)."""
    import json

    from keras_implicit.files import atomic_write

    with atomic_write(path) as handle:
        json.dump(data, handle, indent=2)
