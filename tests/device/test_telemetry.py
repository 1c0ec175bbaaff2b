"""tegrastats parsing on lines recorded from Jetsons, and the reader on a real subprocess."""

from __future__ import annotations

import os
import stat
import sys
import time

from device.telemetry import Telemetry, parse_tegrastats, read_thermal_zones

# AGX Xavier, JetPack 4.x (L4T r32): power rails as current/average without units.
XAVIER_JP4 = (
    "RAM 2448/31920MB (lfb 6894x4MB) SWAP 0/15960MB (cached 0MB) "
    "CPU [2%@1190,0%@1190,0%@1190,0%@1190,off,off,off,off] EMC_FREQ 0% GR3D_FREQ 13% "
    "AO@33.5C GPU@33C Tdiode@35.75C PMIC@100C AUX@33C CPU@34.5C thermal@33.95C Tboard@33C "
    "GPU 0/0 CPU 153/153 SOC 1378/1378 CV 0/0 VDDRQ 306/306 SYS5V 1567/1567"
)
# AGX Xavier, JetPack 5.x (L4T r35): timestamp, units on rails, -256C for sensors that are off.
XAVIER_JP5 = (
    "11-23-2026 10:00:00 RAM 3010/31002MB (lfb 5868x4MB) SWAP 0/15501MB (cached 0MB) "
    "CPU [12%@2265,3%@2265,off,off,5%@2265,0%@2265,1%@2265,0%@2265] EMC_FREQ 4%@2133 GR3D_FREQ 47%@[1377] "
    "NVENC off NVDEC off NVJPG off NVJPG1 off VIC off OFA off NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 "
    "CV0@-256C CPU@36.5C SOC2@34.281C SOC0@35.5C CV1@-256C GPU@34.531C tj@37.156C SOC1@33.906C CV2@-256C "
    "VDD_GPU_SOC 2375mW/2375mW VDD_CPU_CV 396mW/396mW VIN_SYS_5V0 3239mW/3239mW"
)
# Orin Nano, JetPack 6: lower-case sensor names and an average without its unit.
ORIN_JP6 = (
    "12-23-2024 22:54:11 RAM 3162/7620MB (lfb 4x2MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [1%@729,0%@729,0%@729,0%@729,off,off] GR3D_FREQ 1% cpu@62.843C soc2@61.968C soc0@60.625C "
    "gpu@61.687C tj@62.843C soc1@61.687C VDD_IN 3913mW/3922mW VDD_CPU_GPU_CV 598mW/598 VDD_SOC 1238mW/1237mW"
)


def test_xavier_jetpack4_line():
    r = parse_tegrastats(XAVIER_JP4)
    assert r.temperatures == {
        "AO": 33.5, "GPU": 33.0, "Tdiode": 35.75, "PMIC": 100.0, "AUX": 33.0, "CPU": 34.5, "thermal": 33.95, "Tboard": 33.0,
    }  # fmt: skip
    assert r.power_mw == {"GPU": 0, "CPU": 153, "SOC": 1378, "CV": 0, "VDDRQ": 306, "SYS5V": 1567}
    assert r.gpu_load == 13
    assert r.cpu_load == [2, 0, 0, 0, None, None, None, None]
    assert (r.ram_used_mb, r.ram_total_mb) == (2448, 31920)


def test_xavier_jetpack5_line_ignores_sensors_that_are_off():
    r = parse_tegrastats(XAVIER_JP5)
    assert "CV0" not in r.temperatures and "CV2" not in r.temperatures
    assert r.temperatures["GPU"] == 34.531 and r.temperatures["tj"] == 37.156
    assert r.power_mw == {"VDD_GPU_SOC": 2375, "VDD_CPU_CV": 396, "VIN_SYS_5V0": 3239}
    assert r.gpu_load == 47
    assert r.cpu_load[:4] == [12, 3, None, None]


def test_orin_line_and_stats_keys():
    r = parse_tegrastats(ORIN_JP6)
    assert r.temperatures["gpu"] == 61.687
    assert r.power_mw == {"VDD_IN": 3913, "VDD_CPU_GPU_CV": 598, "VDD_SOC": 1238}
    stats = r.to_stats()
    assert stats["gpu_load"] == 1 and stats["temperatures"]["tj"] == 62.843


def test_garbage_line_gives_an_empty_reading():
    r = parse_tegrastats("tegrastats: permission denied")
    assert r.temperatures == {} and r.power_mw == {} and r.gpu_load is None


def fake_tegrastats(folder, lines):
    """An executable `tegrastats` that prints `lines` (50 ms apart) and then waits to be stopped."""
    script = folder / "tegrastats"
    script.write_text(
        "#!{}\nimport time\nfor line in {!r}:\n    print(line, flush=True)\n    time.sleep(0.05)\ntime.sleep(30)\n".format(
            sys.executable, list(lines)
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_reader_follows_a_real_tegrastats_process(tmp_path):
    telemetry = Telemetry(interval_ms=50, command=str(fake_tegrastats(tmp_path, [XAVIER_JP4, XAVIER_JP5]))).start()
    try:
        deadline = time.monotonic() + 10
        while telemetry.latest().gpu_load != 47 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert telemetry.latest().gpu_load == 47
        assert telemetry.source == "tegrastats"
    finally:
        telemetry.stop()


def test_thermal_zones_from_sysfs(tmp_path):
    for index, (name, millidegrees) in enumerate(
        [("CPU-therm", "41500"), ("GPU-therm", "39000"), ("CV0-therm", "-256000")]
    ):
        zone = tmp_path / "sys/class/thermal/thermal_zone{}".format(index)
        os.makedirs(zone)
        (zone / "type").write_text(name + "\n")
        (zone / "temp").write_text(millidegrees + "\n")
    assert read_thermal_zones(str(tmp_path)) == {"CPU-therm": 41.5, "GPU-therm": 39.0}


def test_status_line_shows_the_hottest_sensor_and_gpu_load():
    from device.runtime import status_text

    line = status_text({"fps": 12.0, "frames": 5, **parse_tegrastats(XAVIER_JP5).to_stats()})
    assert "tj 37C" in line and "gpu 47%" in line
    assert "gpu" not in status_text({"fps": 12.0, "frames": 5})
