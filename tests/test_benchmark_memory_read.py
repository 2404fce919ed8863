"""The memory-read micro-benchmark runs at tiny sizes and keeps earlier results."""
import json

from tools.benchmark_memory_read import main


def test_quick_run_writes_both_paths_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / 'read.json'
    assert main(['--quick', '--dtypes', 'fp32', '--repeats', '1', '--out', str(out)]) == 0
    results = json.loads(out.read_text())
    assert [(r['kept'], r['path']) for r in results['runs']] == [
        (2, 'dense'), (2, 'packed'), (5, 'dense'), (5, 'packed')]
    assert all(r['max_diff'] < 1e-5 and r['ms'] > 0 for r in results['runs'])
    before = out.read_text()
    assert main(['--quick', '--out', str(out)]) == 2
    assert capsys.readouterr().err.strip() == f'error: {out}: already exists; choose another --out (earlier results are kept)'
    assert out.read_text() == before
