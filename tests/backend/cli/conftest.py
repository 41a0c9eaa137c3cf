"""CLI test helpers: run `backend.cli.main` in this process (no interpreter start-up)."""
import pytest

from backend import cli


@pytest.fixture
def run_cli(capsys):
    """run_cli(*args) -> (exit code, stdout, stderr)."""
    def run(*args):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as stop:
            code = stop.code
        out, err = capsys.readouterr()
        return code, out, err

    return run
