"""tests/conftest.py: a missing ../shared skips the tests that need it, except under CI."""
import pytest

from conftest import require_shared


def test_missing_shared_data_skips_with_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.delenv('CI', raising=False)
    with pytest.raises(pytest.skip.Exception, match=f'needs {tmp_path / "absent.npz"}: reference data'):
        require_shared(str(tmp_path / 'absent.npz'))
    assert require_shared(str(tmp_path)) == str(tmp_path)


def test_missing_shared_data_fails_under_ci(tmp_path, monkeypatch):
    monkeypatch.setenv('CI', 'true')
    with pytest.raises(pytest.fail.Exception, match='RMNET_SHARED'):
        require_shared(str(tmp_path / 'absent.npz'))
