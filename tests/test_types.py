"""The type hints of what endpoint files use (``FlaskWorker``, ``Logger``, ``Notifications``) and
of ``bis_twisted.protocol`` hold under ``mypy --strict``, and an endpoint written as users write
one, with or without hints, passes mypy against them.

``shared/web.py`` (``Answer``, ``dumps``) and ``shared/waiters.py`` are checked with them: the
endpoint API uses the one, the protocol's neighbours the other.
"""

import os
import subprocess
import sys
import textwrap

from procs import REPO_ROOT

TYPED_MODULES = ['protocol.py', 'worker.py', 'logger.py', 'notifications.py', '_version.py', '__init__.py',
                 'errors.py', os.path.join('shared', 'waiters.py')]


def mypy(*args, cache_dir):
    done = subprocess.run([sys.executable, '-m', 'mypy', '--follow-imports=silent', '--cache-dir', str(cache_dir),
                           '--no-error-summary', '--show-error-codes', *args],
                          cwd=REPO_ROOT, env=dict(os.environ, MYPYPATH=REPO_ROOT), capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stdout + done.stderr


def write_endpoint(folder, name, source):
    path = folder / name
    path.write_text(textwrap.dedent(source), encoding='utf-8')
    return str(path)


def test_the_public_api_modules_pass_mypy_strict(tmp_path):
    code, output = mypy('--strict', *[os.path.join('bis_twisted', name) for name in TYPED_MODULES], cache_dir=tmp_path)
    assert code == 0, output


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


def test_an_endpoint_written_as_users_write_one_passes_mypy(tmp_path):
    files = [write_endpoint(tmp_path, 'untyped_demo.py', UNTYPED_ENDPOINT),
             write_endpoint(tmp_path, 'typed_demo.py', TYPED_ENDPOINT)]
    code, output = mypy(*files, cache_dir=tmp_path / 'cache')
    assert code == 0, output


def test_mypy_sees_the_worker_class_through_the_package(tmp_path):
    path = write_endpoint(tmp_path, 'wrong_demo.py', WRONG_ENDPOINT)
    code, output = mypy(path, cache_dir=tmp_path / 'cache')
    assert code == 1, output
    errors = [line for line in output.splitlines() if ': error: ' in line]
    expected = [('_pre_process', 'incompatible with supertype', '[override]'),
                ('"P" of "Logger"', '[call-arg]'),
                ('"notifications"', '"str"', '[arg-type]'),
                ('"execute" of "FlaskWorker"', '"list[str]"', '[arg-type]'),
                ('"lib_name" to "Logger"', '"int"', '[arg-type]')]
    for fragments in expected:
        assert any(all(f in line for f in fragments) for line in errors), (fragments, output)
    assert len(errors) == len(expected), output
