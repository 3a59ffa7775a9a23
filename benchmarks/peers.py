"""What the comparison scripts share: the check of a peer library's interpreter.

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
