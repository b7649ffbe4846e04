"""CI must run exactly what the README tells users to run."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(text):
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_commands():
    readme = bash_blocks((ROOT / "README.md").read_text())
    install = next(line for line in readme if "pip install --no-build-isolation" in line)
    test = next(line for line in readme if "pytest" in line)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci, "README install command missing from .ci/run"
    assert test in ci, "README test command missing from .ci/run"
    assert ci.index(install) < ci.index(test)
