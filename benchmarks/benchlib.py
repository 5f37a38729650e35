"""What the benchmark scripts share: the machine and library description, interleaved timing, atomic output."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch

from timm_ghost._io import atomic_output_file


def gpu_section() -> Dict[str, Any]:
    """The JSON's GPU entry: these scripts measure the CPU only, and say so whether or not a GPU is present."""
    present = f' ({torch.cuda.get_device_name(0)} present, not used)' if torch.cuda.is_available() else ''
    note = f'These scripts measure the CPU only{present}; no GPU figures are taken.'
    return {'measured': False, 'cuda_available': torch.cuda.is_available(), 'note': note, 'results': []}


def _parse_cpuinfo() -> Dict[str, Any]:
    info: Dict[str, Any] = {'model': platform.processor() or platform.machine(), 'flags': set(), 'mhz': None}
    cores = set()
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return {**info, 'physical_cores': os.cpu_count() or 1}
    phys = core = None
    for line in text.splitlines():
        key, _, value = (s.strip() for s in line.partition(':'))
        if key == 'model name':
            info['model'] = value
        elif key == 'flags':
            info['flags'] = set(value.split())
        elif key == 'cpu MHz' and info['mhz'] is None:
            info['mhz'] = float(value)
        elif key == 'physical id':
            phys = value
        elif key == 'core id':
            core = value
        elif not line.strip() and core is not None:
            cores.add((phys, core))
            phys = core = None
    if core is not None:
        cores.add((phys, core))
    info['physical_cores'] = len(cores) or os.cpu_count() or 1
    return info


def machine_info(threads: int) -> Dict[str, Any]:
    """CPU model, SIMD flags, cores, and a peak fp32 GFLOP/s estimate for ``threads`` threads.

    Peak = cores used x GHz x FLOPs per cycle, where FLOPs per cycle assumes two FMA units at the widest vector width
    the flags announce (AVX-512: 2 x 16 lanes x 2 = 64; AVX2+FMA: 32; SSE: 8). It is an upper bound: CPUs that run
    AVX-512 on 256-bit units (AMD Zen 4) reach half of it, and clocks drift from the reported MHz.
    """
    cpu = _parse_cpuinfo()
    flags = cpu['flags']
    if 'avx512f' in flags:
        simd, flops_per_cycle = 'avx512f', 64
    elif 'avx2' in flags and 'fma' in flags:
        simd, flops_per_cycle = 'avx2+fma', 32
    elif 'avx' in flags:
        simd, flops_per_cycle = 'avx', 16
    else:
        simd, flops_per_cycle = 'sse', 8
    cores_used = min(threads, cpu['physical_cores'])
    ghz = (cpu['mhz'] or 0.0) / 1000.0
    return {
        'cpu_model': cpu['model'],
        'logical_cpus': os.cpu_count(),
        'physical_cores': cpu['physical_cores'],
        'threads': threads,
        'flags': {name: name in flags for name in ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vnni',
                                                   'amx_tile', 'amx_bf16')},
        'ghz': round(ghz, 3),
        'widest_simd': simd,
        'flops_per_cycle_per_core': flops_per_cycle,
        'peak_gflops': round(cores_used * ghz * flops_per_cycle, 1),
        'peak_method': f'{cores_used} cores x {ghz:.2f} GHz x {flops_per_cycle} fp32 FLOPs/cycle ({simd}, two FMA '
                       f'units assumed); an upper bound',
        'platform': platform.platform(),
        'loadavg_at_start': [round(v, 2) for v in os.getloadavg()],
    }


def versions() -> Dict[str, str]:
    import timm

    import timm_ghost
    out = {'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
           'timm_ghost': getattr(timm_ghost, '__version__', 'unknown'),
           'onednn': str(torch.backends.mkldnn.is_available())}
    try:
        import onnxruntime
        out['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        out['onnxruntime'] = 'not installed'
    return out


def interleaved_latencies(
        fns: Dict[str, Callable[[], Any]], rounds: int, round_s: float, warmup: int = 2,
) -> Dict[str, List[float]]:
    """Per-call wall times (seconds) of each ``fns`` entry, measured in interleaved rounds (A, B, C, A, B, C, ...)
    so that drifting machine load hits every entry alike. Each round calls an entry ``round_s / its warm-up time``
    times (at least once)."""
    per_call = {}
    for key, fn in fns.items():
        times = []
        for _ in range(max(1, warmup)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        per_call[key] = min(times)
    calls = {key: max(1, int(round_s / max(t, 1e-6))) for key, t in per_call.items()}
    out: Dict[str, List[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            for _ in range(calls[key]):
                start = time.perf_counter()
                fn()
                out[key].append(time.perf_counter() - start)
    return out


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1..99) of ``values``, interpolated linearly as numpy's default does."""
    if not 0 < q < 100:
        raise ValueError(f'q: expected a percentile in 1..99, got {q!r}')
    if len(values) < 2:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method='inclusive')[q - 1])


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically (no half-written file)."""
    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + '\n')


def save_figure_atomic(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG to ``path`` atomically."""
    with atomic_output_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches='tight', format='png')


def finish(data: Dict[str, Any], out: Path, start: float, plot: Callable[[Dict[str, Any], Path], None]) -> int:
    """Stamp ``data`` with the wall time and the closing load average, write ``out`` (JSON) and its PNG chart."""
    data['wall_s'] = round(time.time() - start, 1)
    data['machine']['loadavg_at_end'] = [round(v, 2) for v in os.getloadavg()]  # other load skews the timings
    write_json_atomic(out, data)
    plot(data, out.with_suffix('.png'))
    print(f'wrote {out} and {out.with_suffix(".png")} ({data["wall_s"]} s)')
    return 0


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def parse_int_list(text: str, name: str) -> List[int]:
    """``'1,8,32'`` -> ``[1, 8, 32]``; a clear error naming ``name`` otherwise."""
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f'{name}: expected comma-separated positive integers such as 1,8,32, got {text!r}')
    return values
