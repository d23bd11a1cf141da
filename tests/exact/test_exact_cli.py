import json

import numpy as np
import pytest

from unlearnx.exact.cli import main

SMALL = ["--epochs", "5", "--hidden", "32", "-S", "2", "-R", "2"]


@pytest.mark.parametrize("method", ["sisa", "s3t"])
def test_cli_end_to_end(tmp_path, capsys, method):
    d = str(tmp_path / "m")
    assert main(["init", d, "--method", method, *SMALL]) == 0
    assert main(["init", d, *SMALL]) == 2  # refuses to overwrite
    assert "already holds" in capsys.readouterr().err
    assert main(["train", d]) == 0
    status = json.loads(_status(d, capsys))
    assert status["trained"] and status["requests_received"] == 0
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    ids = cfg["assignment"][0][1][:2]
    assert main(["delete", d, "--ids", ",".join(map(str, ids)), "--requester", "ticket-1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["state"] == "applied" and out["ids"] == 2
    assert main(["delete", d, "--ids", str(ids[0]), "--requester", "ticket-2"]) == 2
    assert "already requested" in capsys.readouterr().err
    assert main(["delete", d, "--ids", "999999", "--requester", "ticket-3"]) == 2
    assert "unknown ids" in capsys.readouterr().err
    assert main(["serve-predict", d]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    acc = float(lines[-1].split()[1])
    assert acc > 0.5 and len(lines[0].split()) == 360
    x = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["serve-predict", d, "--input", str(tmp_path / "in.npz"), "--out", str(tmp_path / "p.json")]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())["predictions"]) == 5
    status = json.loads(_status(d, capsys))
    assert status["requests_applied"] == 1 and status["ids_deleted"] == 2
    if method == "s3t":
        assert status["deletion_rate_simulated"] > 0 and len(status["prefixes"]) == 2
    assert main(["audit", d]) == 0


def _status(d, capsys):
    capsys.readouterr()
    assert main(["status", d]) == 0
    return capsys.readouterr().out


def test_cli_data_file_and_bad_arguments(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y, ids=np.arange(100, 160), test_x=x[:10], test_y=y[:10])
    d = str(tmp_path / "m")
    assert main(["init", d, "--data", str(tmp_path / "d.npz"), "-S", "2", "-R", "3", "--hidden", "8"]) == 0
    assert main(["train", d]) == 0
    assert main(["delete", d, "--ids", "100,159", "--requester", "x"]) == 0
    assert main(["audit", d]) == 0
    assert main(["init", str(tmp_path / "n"), "--data", str(tmp_path / "missing.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["delete", d, "--ids", "a,b", "--requester", "x"])
    assert main(["status", str(tmp_path / "nothing")]) == 2
