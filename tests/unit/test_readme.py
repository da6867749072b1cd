"""The README's Python example runs as written."""

import re
import subprocess
import sys

from tracker_reencrypt.keys.local import LocalKeyProvider

from conftest import ROOT


def test_the_readme_field_example_encrypts_and_decrypts(tmp_path):
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    LocalKeyProvider(tmp_path / "keyring.json").init()
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "tracker-mek/v1 ['alg', 'ct', 'dek', 'iv', 'kid', 'v', 'wrap']",
        "{'text': 'Call Ada on +1-555-0100'}",
    ]
