"""The local runtime's stage server is a part only when asked for, and runs find it."""

from __future__ import annotations

from kubeloop.local.runtime import PARTS, STAGES, LocalRuntime


def test_warm_stages_add_the_stage_server_part_and_tell_runs_where_it_is(tmp_path):
    cold = LocalRuntime(tmp_path / "cold")
    assert cold.parts == PARTS
    assert "KUBELOOP_STAGE_SERVER" not in cold.env()

    warm = LocalRuntime(tmp_path / "warm", warm_stages=True)
    assert warm.parts == (*PARTS, STAGES)
    assert warm.env()["KUBELOOP_STAGE_SERVER"] == str(warm.root / "stages.sock")
    # the watchdog reloads the runtime from runtime.json: the part stays watched
    warm.save()
    assert LocalRuntime.load(tmp_path / "warm").parts == (*PARTS, STAGES)


def test_settings_take_the_stage_server_from_the_environment(monkeypatch, tmp_path):
    from kubeloop.settings import get_settings

    monkeypatch.setenv("KUBELOOP_STAGE_SERVER", str(tmp_path / "s.sock"))
    get_settings.cache_clear()
    try:
        assert get_settings().stage_server == tmp_path / "s.sock"
    finally:
        get_settings.cache_clear()
