"""benchmarks/soak.py, short: `edge-sdk run` through camera outages, serial pulls, preview clients,
metrics scrapes (and broker restarts when it has --mqtt) without a crash or a leaked fd or thread."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", REPO / "benchmarks" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_soak_leaks_no_fd_or_thread_and_keeps_the_watchdog_fed(tiny_bundle, tmp_path):
    soak = load_soak()
    result = soak.run_soak(2.5, bundle=tiny_bundle, out=tmp_path)
    log = Path(result["runtime_log"]).read_text(errors="replace")[-3000:]

    assert result["crashes"] == 0, log
    assert result["disruptions"]["camera_outages"] >= 5 and result["disruptions"]["serial_pulls"] >= 8
    # Levels are medians of steady samples (every link up, no client connected), where a leak shows
    # and the disruptions' own sockets, ports and threads do not: no tolerance is needed.
    assert result["steady_after_warmup"] >= 2 * soak.STEADY_WINDOW
    assert result["fds"]["growth"] == 0, result["fds"]
    assert result["threads"]["growth"] == 0, result["threads"]
    watchdog = result["watchdog"]
    assert watchdog["pings"] > 0
    assert watchdog["max_gap_while_frames_can_flow_s"] <= watchdog["interval_s"], watchdog
    assert result["camera"]["reconnected"] >= result["camera"]["outages"] - 1  # the last may end with the run
    assert result["preview"]["clients"] > 0 and result["preview"]["failed"] == 0
    assert result["preview"]["with_frames"] > 0
    assert result["scrapes"]["failed"] == 0
    assert result["serial"]["completed_plugs"] > 0
    assert result["serial"]["completed_plugs_with_messages"] == result["serial"]["completed_plugs"]
    assert result["metrics"]["edge_sdk_source_reconnects_total"] >= result["disruptions"]["camera_outages"]
    assert result["metrics"]["edge_sdk_serial_reconnects_total"] >= result["serial"]["completed_plugs"] - 1
    # RSS only loosely: within 2 minutes after a 37 s warm-up Paddle's and glibc's allocators are still
    # settling (new malloc arenas for the threads of preview clients and scrapes), so a 5 MB bound
    # would be noise; 30 MB still catches a capture or a predictor leaked per reconnect.
    assert result["rss_mb"]["growth"] < 30, result["rss_mb"]
    assert Path(result["png"]).stat().st_size > 0
