"""utils.cli: one exit status per outcome, SIGTERM handled like Ctrl-C (temporary files removed)."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from utils.cli import UserError, run_command


def test_statuses_and_the_single_error_line(capsys):
    def user_error(argv):
        raise UserError('bad.png: the mask holds no object')

    def os_error(argv):
        open(os.path.join(argv[0], 'absent', 'file'))

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_command(lambda argv: None) == 0
    assert run_command(user_error) == 2
    assert capsys.readouterr().err == 'error: bad.png: the mask holds no object\n'
    assert run_command(os_error, ['/nowhere']) == 2
    assert capsys.readouterr().err == 'error: /nowhere/absent/file: No such file or directory\n'
    assert run_command(interrupted) == 130
    assert capsys.readouterr().err.startswith('error: interrupted')


def test_a_bug_is_not_hidden():
    def bug(argv):
        raise ZeroDivisionError('a bug')

    with pytest.raises(ZeroDivisionError):
        run_command(bug)


def test_sigterm_removes_the_file_being_written(tmp_path):
    script = textwrap.dedent(f'''
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from utils.cli import run_command
        from utils.io import atomic_write

        def write(temporary):
            with open(temporary, 'w') as f:
                f.write('half of it')
            os.kill(os.getpid(), signal.SIGTERM)
            with open(temporary, 'a') as f:
                f.write(' and the rest')

        def main(argv):
            atomic_write({str(tmp_path / 'result.txt')!r}, write)

        sys.exit(run_command(main))
    ''')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM
    assert done.stderr.startswith('error: terminated') and 'Traceback' not in done.stderr
    assert os.listdir(tmp_path) == []


def test_workers_ignore_ctrl_c_and_leave_it_to_their_parent():
    script = textwrap.dedent(f'''
        import os, signal, sys, time
        sys.path.insert(0, {ROOT!r})
        from utils.cli import ignore_interrupts
        ignore_interrupts()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        print('still running')
    ''')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == 'still running\n' and done.stderr == ''
