"""Every Python block of the README runs as written (from the repository root, on the shared data)."""
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKS = re.findall(r"```python\n(.*?)```", open(os.path.join(REPO, "README.md"), encoding="utf-8").read(), re.S)


def test_the_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_block_runs(number, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    if os.path.abspath(data_dir) != os.path.abspath(os.path.join(REPO, "..", "shared", "data")):
        pytest.skip("the README's paths assume the data at ../shared/data")
    exec(compile(BLOCKS[number], f"README.md block {number + 1}", "exec"), {})
    assert capsys.readouterr().out.strip()
