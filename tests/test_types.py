"""The type hints of what endpoint files use (``FlaskWorker``, ``Logger``, ``Notifications``) and
of ``bis_twisted.protocol`` hold under ``mypy --strict``, and an endpoint written as users write
one, with or without hints, passes mypy against them (in mypy's default mode, as users run it).

mypy runs once for the module, a lint step: the package's typed modules and the endpoint files
together, ``--strict`` for the one, the default checks for the others (a config section).

``shared/waiters.py`` is checked with them (the protocol's neighbours use it), and the light
client (``bis_twisted/client``), whose users' type checkers read it through its ``py.typed``.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from procs import REPO_ROOT

TYPED_MODULES = ['protocol.py', 'worker.py', 'logger.py', 'notifications.py', '_version.py', '__init__.py',
                 'errors.py', os.path.join('shared', 'waiters.py'), os.path.join('client', '__init__.py')]


# what --strict turns on that a config section can turn off for one module
_DEFAULT_MODE = """
disallow_any_generics = False
disallow_subclassing_any = False
disallow_untyped_calls = False
disallow_untyped_defs = False
disallow_incomplete_defs = False
check_untyped_defs = False
disallow_untyped_decorators = False
warn_unused_ignores = False
warn_return_any = False
implicit_reexport = True
strict_equality = False
"""
ENDPOINTS = {'untyped_demo': 'UNTYPED_ENDPOINT', 'typed_demo': 'TYPED_ENDPOINT', 'wrong_demo': 'WRONG_ENDPOINT'}


@pytest.fixture(scope='module')
def mypy_errors(tmp_path_factory):
    """``{file name: [error lines]}`` of one mypy run over the typed modules and the endpoints."""
    folder = tmp_path_factory.mktemp('mypy')
    files = [os.path.join('bis_twisted', name) for name in TYPED_MODULES]
    for module, source in ENDPOINTS.items():
        path = folder / (module + '.py')
        path.write_text(textwrap.dedent(globals()[source]), encoding='utf-8')
        files.append(str(path))
    config = folder / 'mypy.ini'
    config.write_text('[mypy]\n[mypy-{}]{}'.format(','.join(ENDPOINTS), _DEFAULT_MODE))
    done = subprocess.run([sys.executable, '-m', 'mypy', '--strict', '--config-file', str(config),
                           '--follow-imports=silent', '--cache-dir', str(folder / 'cache'), '--no-error-summary',
                           '--show-error-codes', *files],
                          cwd=REPO_ROOT, env=dict(os.environ, MYPYPATH=REPO_ROOT), capture_output=True, text=True,
                          timeout=180)
    output = done.stdout + done.stderr
    errors = {}
    for line in output.splitlines():
        if ': error: ' in line:
            errors.setdefault(os.path.basename(line.split(':', 1)[0]), []).append(line)
    assert done.returncode in (0, 1) and (done.returncode == 1) == bool(errors), output  # 2: mypy itself failed
    return errors


def test_the_public_api_modules_pass_mypy_strict(mypy_errors):
    typed = {os.path.basename(name) for name in TYPED_MODULES}
    assert not {name: lines for name, lines in mypy_errors.items() if name in typed}, mypy_errors


UNTYPED_ENDPOINT = '''
    from bis_twisted import FlaskWorker

    _CONFIG = {'WEIGHT': 2, 'BIAS': 1}


    class UntypedWorker(FlaskWorker):
        def __init__(self, **kwargs):
            super(UntypedWorker, self).__init__(prefix_log='[UNT]', **kwargs)

        def _load_model(self):
            self.model = lambda x: x * self.cfg_weight + self.cfg_bias
            self.log.P('model loaded on {}'.format(self.device), color='g')
            return

        def _pre_process(self, inputs):
            if 'INPUT_VALUE' not in inputs:
                raise ValueError('INPUT_VALUE should be defined in inputs')
            return float(inputs['INPUT_VALUE'])

        def _predict(self, prep_inputs):
            self._create_notification(notif='log', msg='predicting {}'.format(prep_inputs))
            self._create_notification(notification_type='log', notification='old spelling')
            return self.model(prep_inputs)

        def _post_process(self, pred):
            return {'result': pred, 'config': self.config_data}
'''

TYPED_ENDPOINT = '''
    from typing import Any, Dict, Iterator, List, Optional

    from bis_twisted import FlaskWorker, Logger, Worker
    from bis_twisted.notifications import Notifications
    from bis_twisted.protocol import READY_LINE, child_argv


    class TypedWorker(FlaskWorker):
        def _load_model(self) -> None:
            self.scale: float = float(self.cfg_scale)
            self.log.P('loaded, device ' + self.device)

        def _pre_process(self, inputs: dict) -> dict:
            return {'x': float(inputs['X'])}

        def _predict(self, prep_inputs: dict) -> float:
            return prep_inputs['x'] * self.scale

        def _post_process(self, pred: float) -> Dict[str, Any]:
            return {'y': pred, 'worker_id': self.worker_id}


    class BatchedWorker(Worker):
        def _pre_process(self, inputs: Dict[str, Any]) -> List[float]:
            return [float(v) for v in inputs['ROWS']]

        def _batch(self, prep_inputs_list: List[List[float]]) -> List[List[float]]:
            return prep_inputs_list

        def _predict(self, prep_inputs: List[List[float]]) -> List[float]:
            return [sum(row) for row in prep_inputs]

        def _unbatch(self, preds: List[float]) -> List[float]:
            return preds

        def _post_process(self, pred: float) -> float:
            return pred


    class StreamingWorker(FlaskWorker):
        def _pre_process(self, inputs: Dict[str, Any]) -> str:
            return str(inputs.get('PROMPT', ''))

        def _predict(self, prep_inputs: str) -> Iterator[str]:
            for word in prep_inputs.split():
                yield word

        def _post_process(self, pred: str) -> Dict[str, str]:
            return {'word': pred}


    def drive() -> Optional[int]:
        notes = Notifications()
        worker = TypedWorker(log=Logger(lib_name='demo'), default_config={'SCALE': 2}, notifications=notes)
        worker.startup()
        answer = worker.execute({'X': 3}, call_id=1, request_id='r-1')
        answers = BatchedWorker().execute_batch([({'ROWS': [1, 2]}, 1, None), ({'ROWS': [3]}, 2, 'r-2')])
        general = notes.snapshot()['GENERAL']
        argv: List[str] = child_argv('python', name='demo', port=0)
        status: int = answer.status
        return status + len(answers) + len(general) + len(argv) + len(READY_LINE) if StreamingWorker.streams() else None
'''

# what mypy must catch, so that a clean run above means FlaskWorker was really checked
WRONG_ENDPOINT = '''
    from bis_twisted import FlaskWorker, Logger


    class WrongWorker(FlaskWorker):
        def _pre_process(self, inputs: dict, extra: int) -> dict:
            return inputs

        def _predict(self, prep_inputs: dict) -> dict:
            self.log.P()
            return prep_inputs


    WrongWorker(notifications='no').execute(['not', 'a', 'dict'], call_id=1)
    Logger(lib_name=3)
'''


def test_an_endpoint_written_as_users_write_one_passes_mypy(mypy_errors):
    assert 'untyped_demo.py' not in mypy_errors and 'typed_demo.py' not in mypy_errors, mypy_errors


def test_mypy_sees_the_worker_class_through_the_package(mypy_errors):
    errors = mypy_errors.get('wrong_demo.py', [])
    output = '\n'.join(errors)
    expected = [('_pre_process', 'incompatible with supertype', '[override]'),
                ('"P" of "Logger"', '[call-arg]'),
                ('"notifications"', '"str"', '[arg-type]'),
                ('"execute" of "FlaskWorker"', '"list[str]"', '[arg-type]'),
                ('"lib_name" to "Logger"', '"int"', '[arg-type]')]
    for fragments in expected:
        assert any(all(f in line for f in fragments) for line in errors), (fragments, output)
    assert len(errors) == len(expected), output
