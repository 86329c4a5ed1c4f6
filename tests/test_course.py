"""course.py, the script behind the README's two commands."""

import json
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def course(load_script):
    return load_script("course.py")


def test_torch_choice_follows_the_machine(course, monkeypatch):
    monkeypatch.delenv("SDLEARN_TORCH", raising=False)
    monkeypatch.setattr(course, "has_nvidia_gpu", lambda: False)
    assert course.choose_torch() == "cpu"
    monkeypatch.setattr(course, "has_nvidia_gpu", lambda: True)
    assert course.choose_torch() == "cuda"


def test_torch_choice_can_be_forced(course, monkeypatch):
    monkeypatch.setattr(course, "has_nvidia_gpu", lambda: True)
    monkeypatch.setenv("SDLEARN_TORCH", "CPU")
    assert course.choose_torch() == "cpu"
    monkeypatch.setenv("SDLEARN_TORCH", "rocm")
    with pytest.raises(SystemExit, match="SDLEARN_TORCH must be cpu, cuda or skip, got 'rocm'"):
        course.choose_torch()


def test_no_gpu_on_linux_never_asks_pypi_for_plain_torch(course, monkeypatch, tmp_path):
    """Without a GPU, the set-up asks for the CPU wheel, never for PyPI's default (CUDA) torch."""
    calls = []
    monkeypatch.setattr(course.platform, "system", lambda: "Linux")
    monkeypatch.setattr(course, "torch_installed", lambda py: None)
    monkeypatch.setattr(course, "run", lambda *args, check=True: calls.append([str(a) for a in args]) or 1)
    course.install_torch(tmp_path / "python", "cpu")
    assert calls[0][-1] == f"torch=={course.TORCH_VERSION}+cpu"
    assert calls[1][-3:] == ["torch", "--index-url", course.TORCH_CPU_INDEX]


def test_usage_without_a_command(course, capsys):
    assert course.main([]) == 2
    assert "python3 course.py lab" in capsys.readouterr().out


def test_lab_opens_the_first_notebook(course, monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(course, "setup", lambda: tmp_path / "venv" / "bin" / "python")
    monkeypatch.setattr(course.subprocess, "call", lambda args, **kw: calls.append(args) or 0)
    monkeypatch.setattr(course.os, "geteuid", lambda: 0)
    assert course.main(["lab", "--port", "8899"]) == 0
    args = calls[0]
    assert args[1:3] == ["-m", "jupyter"] and args[3] == "lab"
    assert args[4].endswith("notebooks/00_start_here.ipynb")
    assert f"--ServerApp.root_dir={course.ROOT}" in args  # else ../images/*.svg in the notebooks are not served
    assert "--allow-root" in args and args[-2:] == ["--port", "8899"]  # as root (containers), JupyterLab needs it
    assert not any(a.startswith("--ServerApp.port=") for a in args)      # the learner's port is kept
    token = next(a.split("=", 1)[1] for a in args if a.startswith("--IdentityProvider.token="))
    # printed before JupyterLab starts, so that with --no-browser the learner can paste it: notebook 00, not the Launcher
    assert f"http://localhost:8899/lab/tree/notebooks/00_start_here.ipynb?token={token}" in capsys.readouterr().out


def test_lab_picks_a_free_port_and_says_which(course, monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(course, "setup", lambda: tmp_path / "venv" / "bin" / "python")
    monkeypatch.setattr(course.subprocess, "call", lambda args, **kw: calls.append(args) or 0)
    monkeypatch.setattr(course, "free_port", lambda preferred=8888: 8901)
    assert course.main(["lab", "--no-browser", "--IdentityProvider.token=abc"]) == 0
    assert "--ServerApp.port=8901" in calls[0] and "--ServerApp.port_retries=0" in calls[0]
    assert "http://localhost:8901/lab/tree/notebooks/00_start_here.ipynb?token=abc" in capsys.readouterr().out


def test_free_port_avoids_a_port_in_use(course):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port = course.free_port(taken)
        assert port != taken and port > 0


def test_lab_turns_off_the_news_popup_and_keeps_other_settings(course, tmp_path):
    py = tmp_path / "venv" / "bin" / "python"
    overrides = tmp_path / "venv" / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    overrides.parent.mkdir(parents=True)
    overrides.write_text('{"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}}')
    assert course.quiet_lab_settings(py) == overrides
    settings = json.loads(overrides.read_text())
    assert settings["@jupyterlab/apputils-extension:notification"] == {"fetchNews": "false", "checkForUpdates": False}
    assert settings["@jupyterlab/apputils-extension:themes"] == {"theme": "JupyterLab Dark"}


def test_the_news_setting_is_one_jupyterlab_knows():
    """The plugin and the keys exist in the installed JupyterLab's settings schema, with those values allowed."""
    import jupyterlab
    schema_dir = Path(jupyterlab.__file__).parent / "schemas"
    if not schema_dir.exists():
        schema_dir = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"
    schema = json.loads((schema_dir / "@jupyterlab" / "apputils-extension" / "notification.json").read_text())
    props = schema["properties"]
    assert "false" in [choice["const"] for choice in props["fetchNews"]["oneOf"]]      # "Never"
    assert props["checkForUpdates"]["type"] == "boolean"


def test_tests_run_in_parallel_with_a_share_of_the_cores_each(course, monkeypatch):
    monkeypatch.setattr(course.os, "cpu_count", lambda: 2)
    env = {}
    assert course.parallel_args(["-k", "vae"], env) == ["-n", "2", "--dist", "loadfile", "-k", "vae"]
    assert env["OMP_NUM_THREADS"] == "1"
    monkeypatch.setattr(course.os, "cpu_count", lambda: 16)
    env = {}
    assert course.parallel_args([], env)[:2] == ["-n", "8"] and env["OMP_NUM_THREADS"] == "2"
    assert course.parallel_args(["-n", "0"], {}) == ["-n", "0"]          # the learner's own choice is kept
    monkeypatch.setattr(course.os, "cpu_count", lambda: 1)
    assert course.parallel_args(["-x"], {}) == ["-x"]


def test_execute_reruns_notebooks_on_the_bundled_model_and_cpu(course, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(course, "setup", lambda: tmp_path / "python")
    monkeypatch.setattr(course.subprocess, "call", lambda args, **kw: calls.append((args, kw["env"])) or 0)
    monkeypatch.setenv("SDLEARN_MODEL", "sd15-replica")
    assert course.main(["execute", "notebooks/a.ipynb", "notebooks/b.ipynb"]) == 0
    assert [args[-1] for args, _ in calls] == ["notebooks/a.ipynb", "notebooks/b.ipynb"]
    args, env = calls[0]
    assert args[1:5] == ["-m", "jupyter", "nbconvert", "--to"] and "--inplace" in args and "--execute" in args
    assert "SDLEARN_MODEL" not in env and env["SDLEARN_DEVICE"] == "cpu"


@pytest.mark.parametrize("command, script", [("site", "site/make_site.py"), ("slides", "site/make_slides.py")])
def test_site_and_slides_run_their_builders_in_the_courses_environment(course, monkeypatch, tmp_path, command, script):
    calls = []
    monkeypatch.setattr(course, "setup", lambda: tmp_path / "python")
    monkeypatch.setattr(course.subprocess, "call", lambda args, **kw: calls.append(args) or 0)
    assert course.main([command, "--out", "x"]) == 0
    (args,) = calls
    assert args == [str(tmp_path / "python"), str(course.ROOT / script), "--out", "x"]
    assert (course.ROOT / script).is_file()


def test_execute_without_notebooks_says_how(course, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(course, "setup", lambda: tmp_path / "python")
    assert course.main(["execute"]) == 2
    assert "python3 course.py execute notebooks/" in capsys.readouterr().out


def test_chromium_present_is_left_alone(course, monkeypatch, tmp_path):
    chromium = tmp_path / "chromium"
    chromium.touch()
    monkeypatch.setattr(course, "CHROMIUM", chromium)
    monkeypatch.setattr(course.subprocess, "run", lambda *a, **k: pytest.fail("nothing to install"))
    assert course.ensure_chromium() is True


def test_chromium_is_installed_with_apt_as_root(course, monkeypatch, tmp_path):
    chromium = tmp_path / "chromium"
    calls = []

    def fake_run(args, **kwargs):
        calls.append(args)
        if "install" in args:
            chromium.touch()
        return course.subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(course, "CHROMIUM", chromium)
    monkeypatch.setattr(course.platform, "system", lambda: "Linux")
    monkeypatch.setattr(course.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    monkeypatch.setattr(course.os, "geteuid", lambda: 0)
    monkeypatch.setattr(course.subprocess, "run", fake_run)
    assert course.ensure_chromium() is True
    assert calls[-1][-4:] == ["install", "-y", "--no-install-recommends", "chromium"]


def test_chromium_missing_without_root_says_how(course, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(course, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setattr(course.platform, "system", lambda: "Linux")
    monkeypatch.setattr(course.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(course.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(course.subprocess, "run", lambda *a, **k: pytest.fail("no apt-get without root"))
    assert course.ensure_chromium() is False
    assert "sudo apt-get install chromium" in capsys.readouterr().out
