"""The contract of an endpoint's worker class and of the loader that finds it.

Workers are driven directly through ``execute`` (what a pool thread calls), so these tests
need no reactor, no thread and no process.
"""

import base64
import inspect
import json
import os

import pytest

from bis_twisted import FlaskWorker, Worker
from bis_twisted.errors import EndpointLoadError
from bis_twisted.model_server.loader import load_worker_class
from bis_twisted.notifications import Notifications
from bis_twisted.shared.web import Answer
from procs import ENDPOINTS_DIR


def b64(data):
    return base64.b64encode(data).decode('ascii')


def line_of(function, text):
    """The line number in its file of the first line of ``function`` containing ``text``."""
    lines, first = inspect.getsourcelines(function)
    return next(first + index for index, line in enumerate(lines) if text in line)


class EchoWorker(FlaskWorker):
    """Answers its inputs; remembers what ``_pre_process`` saw."""

    def _pre_process(self, inputs):
        self.seen = inputs
        return inputs

    def _predict(self, prep_inputs):
        return prep_inputs

    def _post_process(self, pred):
        return pred


# -- configuration ------------------------------------------------------------------------------
def test_entry_config_overrides_module_defaults_and_reads_as_cfg_attributes():
    worker = EchoWorker(default_config={'WEIGHT': 0, 'BIAS': 5},
                        upstream_config={'WEIGHT': 2, 'NR_WORKERS': 3})

    assert (worker.cfg_weight, worker.cfg_bias, worker.cfg_nr_workers) == (2, 5, 3)
    assert worker.config_data == {'WEIGHT': 2, 'BIAS': 5, 'NR_WORKERS': 3}
    assert worker.config_worker == worker.config_data


def test_cfg_attribute_matches_the_config_key_in_any_case():
    worker = EchoWorker(upstream_config={'MaxLen': 12})

    assert worker.cfg_maxlen == 12


def test_unknown_cfg_attribute_raises_attribute_error_listing_the_known_keys():
    worker = EchoWorker(default_config={'WEIGHT': 0, 'BIAS': 0})

    with pytest.raises(AttributeError, match=r"no config key 'MISSING' \(known: BIAS, WEIGHT\)"):
        worker.cfg_missing
    assert getattr(worker, 'cfg_missing', 'fallback') == 'fallback'


def test_a_subclass_cfg_property_wins_over_the_config_key():
    class OwnCfgWorker(EchoWorker):
        @property
        def cfg_weight(self):
            return self.config_worker['WEIGHT'] * 10

    worker = OwnCfgWorker(default_config={'WEIGHT': 1}, upstream_config={'WEIGHT': 3})

    assert worker.cfg_weight == 30


def test_module_defaults_are_not_changed_by_an_entry():
    defaults = {'WEIGHT': 0}
    EchoWorker(default_config=defaults, upstream_config={'WEIGHT': 7})

    assert defaults == {'WEIGHT': 0}


def test_worker_is_an_alias_of_flask_worker():
    assert Worker is FlaskWorker


# -- notifications ------------------------------------------------------------------------------
class NotifyingWorker(EchoWorker):
    def _predict(self, prep_inputs):
        self._create_notification(notif='log', msg='the README spelling')
        self._create_notification(notification_type='warning', notification='the older spelling')
        return prep_inputs


def test_both_notification_spellings_are_recorded_under_the_call_id():
    notes = Notifications()
    worker = NotifyingWorker(notifications=notes)

    assert worker.execute({'A': 1}, call_id=7).status == 200

    recorded = [(item['NOTIFICATION_TYPE'], item['MODULE'], item['NOTIF']) for item in notes.snapshot()['7']]
    assert recorded == [('LOG', 'NotifyingWorker', 'the README spelling'),
                        ('WARNING', 'NotifyingWorker', 'the older spelling')]


def test_a_notification_outside_a_call_is_general():
    notes = Notifications()
    worker = NotifyingWorker(notifications=notes)
    worker.execute({}, call_id=1)

    worker._create_notification(notif='log', msg='between calls')

    assert [item['NOTIF'] for item in notes.snapshot()['GENERAL']] == ['between calls']


# -- errors in hooks ------------------------------------------------------------------------------
class FailingWorker(FlaskWorker):
    """Raises in the hook named by the input ``FAIL_IN``; echoes otherwise."""

    def _pre_process(self, inputs):
        if inputs.get('FAIL_IN') == '_pre_process':
            raise ValueError('failing in _pre_process')
        return inputs

    def _predict(self, prep_inputs):
        if prep_inputs.get('FAIL_IN') == '_predict':
            raise ValueError('failing in _predict')
        return prep_inputs

    def _post_process(self, pred):
        if pred.get('FAIL_IN') == '_post_process':
            raise ValueError('failing in _post_process')
        return pred


@pytest.mark.parametrize('stage, status', [('_pre_process', 400), ('_predict', 500), ('_post_process', 500)])
def test_an_exception_in_a_hook_answers_the_error_fields_with_its_status(stage, status):
    notes = Notifications()
    worker = FailingWorker(notifications=notes)

    outcome = worker.execute({'FAIL_IN': stage}, call_id=3)

    assert outcome.status == status
    assert set(outcome.body) == {'FailingWorker_ERROR', 'ERROR'}
    details = outcome.body['FailingWorker_ERROR']
    assert details['ERR_TYPE'] == 'ValueError'
    assert details['ERR_MSG'] == 'failing in ' + stage
    # relative to the folder of the worker's file (here this test file's): no server path in an answer
    assert details['ERR_FILE'] == os.path.basename(__file__)
    assert details['ERR_FUNC'] == stage
    assert details['ERR_LINE'] == line_of(getattr(FailingWorker, stage), 'raise ValueError')
    error = outcome.body['ERROR']
    assert '\n' not in error
    assert error.startswith('{} failed: ValueError: failing in {}'.format(stage, stage))
    assert [item['NOTIFICATION_TYPE'] for item in notes.snapshot()['3']] == ['EXCEPTION']


def test_the_worker_answers_again_after_a_hook_failed():
    worker = FailingWorker()
    for stage in ('_pre_process', '_predict', '_post_process'):
        assert worker.execute({'FAIL_IN': stage}, call_id=1).status != 200

    assert worker.execute({'X': 1}, call_id=2) == Answer(200, {'predict_result': {'X': 1}})


def test_err_file_of_a_library_frame_is_shown_from_its_import_root():
    class LibraryWorker(EchoWorker):
        def _predict(self, prep_inputs):
            return json.loads('{not json')  # raised inside the json package

    details = LibraryWorker().execute({}, call_id=1).body['LibraryWorker_ERROR']

    assert details['ERR_FILE'] == os.path.join('json', 'decoder.py')


def test_a_hook_left_unimplemented_answers_500_naming_it():
    class HalfWorker(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs

    outcome = HalfWorker().execute({}, call_id=1)

    assert outcome.status == 500
    assert outcome.body['HalfWorker_ERROR']['ERR_TYPE'] == 'NotImplementedError'
    assert 'HalfWorker must implement _predict' in outcome.body['ERROR']


# -- base64 inputs and outputs ------------------------------------------------------------------
def test_base64_keys_are_decoded_with_the_encoding_before_pre_process():
    worker = EchoWorker()

    worker.execute({'TEXT': b64('héllo wörld'.encode('utf-8')), 'BASE64_KEYS': ['TEXT'],
                    'ENCODING': 'utf-8'}, call_id=1)

    assert worker.seen['TEXT'] == 'héllo wörld'


def test_base64_keys_decode_to_utf8_text_by_default_as_in_the_original():
    class FormatWorker(EchoWorker):
        # the original's example style: text formatting of a decoded input
        def _post_process(self, pred):
            return '{} -> {}'.format(pred['VALUE'], int(pred['VALUE']) + 5)

    outcome = FormatWorker().execute({'VALUE': b64(b'20'), 'BASE64_KEYS': ['VALUE']}, call_id=1)

    assert outcome == Answer(200, {'predict_result': '20 -> 25'})


def test_base64_keys_with_encoding_binary_are_decoded_to_bytes():
    worker = EchoWorker()

    worker.execute({'BLOB': b64(b'\x00\xff'), 'BASE64_KEYS': 'BLOB', 'ENCODING': 'binary'}, call_id=1)

    assert worker.seen['BLOB'] == b'\x00\xff'


def test_the_originals_ansi_encoding_reads_as_cp1252():
    worker = EchoWorker()

    worker.execute({'TEXT': b64('café €5'.encode('cp1252')), 'BASE64_KEYS': ['TEXT'], 'ENCODING': 'ansi'},
                   call_id=1)

    assert worker.seen['TEXT'] == 'café €5'


def test_base64_outputs_are_encoded_in_the_answer():
    class AnswerWorker(EchoWorker):
        def _post_process(self, pred):
            return {'ANSWER': 'ça va', 'RAW': b'\x01\x02', 'COUNT': 2}

    outcome = AnswerWorker().execute({'BASE64_OUTPUTS': ['ANSWER', 'RAW'], 'ENCODING': 'utf-8'}, call_id=1)

    assert outcome == Answer(200, {'predict_result': {
        'ANSWER': b64('ça va'.encode('utf-8')), 'RAW': b64(b'\x01\x02'), 'COUNT': 2}})


def test_base64_outputs_of_a_list_a_dict_or_a_number_encode_their_json():
    class StructuredWorker(EchoWorker):
        def _post_process(self, pred):
            return {'ROWS': [[1, 2], ['é']], 'META': {'n': 2}, 'COUNT': 2}

    outcome = StructuredWorker().execute({'BASE64_OUTPUTS': ['ROWS', 'META', 'COUNT']}, call_id=1)

    assert outcome.status == 200
    result = outcome.body['predict_result']
    decoded = {key: json.loads(base64.b64decode(value).decode('utf-8')) for key, value in result.items()}
    assert decoded == {'ROWS': [[1, 2], ['é']], 'META': {'n': 2}, 'COUNT': 2}


def test_base64_output_of_a_value_that_is_not_json_answers_500_naming_the_key():
    class ObjectWorker(EchoWorker):
        def _post_process(self, pred):
            return {'MODEL': object()}

    outcome = ObjectWorker().execute({'BASE64_OUTPUTS': ['MODEL']}, call_id=1)

    assert outcome.status == 500
    assert outcome.body['ERROR'].startswith('BASE64_OUTPUTS: ')
    assert 'object' in outcome.body['ERROR']


@pytest.mark.parametrize('inputs, message', [
    ({'TEXT': 'not base64!', 'BASE64_KEYS': ['TEXT']},
     "input 'TEXT' (in BASE64_KEYS) is not valid base64"),
    ({'TEXT': b64(b'\xff\xfe'), 'BASE64_KEYS': ['TEXT'], 'ENCODING': 'utf-8'},
     "input 'TEXT' (in BASE64_KEYS) decodes to bytes that are not utf-8 text"),
    ({'TEXT': b64(b'\xff\xfe'), 'BASE64_KEYS': ['TEXT']},
     "input 'TEXT' (in BASE64_KEYS) decodes to bytes that are not utf-8 text"),
    ({'TEXT': 12, 'BASE64_KEYS': ['TEXT']}, "input 'TEXT' (in BASE64_KEYS) is not valid base64"),
    ({'BASE64_KEYS': ['MISSING']}, "BASE64_KEYS names 'MISSING', which is not in the inputs"),
    ({'BASE64_KEYS': {'TEXT': 1}}, 'BASE64_KEYS must be a list'),
    ({'TEXT': b64(b'x'), 'BASE64_KEYS': ['TEXT'], 'ENCODING': 'klingon'}, "ENCODING 'klingon' is not a text encoding"),
], ids=['bad-base64', 'bad-encoding', 'not-utf8-by-default', 'not-a-string', 'missing-key', 'keys-not-a-list',
        'unknown-encoding'])
def test_undecodable_base64_inputs_answer_400_naming_the_key_without_calling_pre_process(inputs, message):
    worker = EchoWorker()

    outcome = worker.execute(inputs, call_id=1)

    assert outcome.status == 400
    assert outcome.body['ERROR'].startswith(message), outcome.body['ERROR']
    assert 'base64.py' not in outcome.body['ERROR']  # names the input, not the library's file
    assert 'EchoWorker_ERROR' in outcome.body
    assert not hasattr(worker, 'seen')


class BatchedEchoWorker(EchoWorker):
    """Batched: ``_predict`` gets the list of pre-processed inputs and answers one per input."""

    def _predict(self, prep_inputs):
        return [{'TEXT': inputs['TEXT'], 'SEEN_WITH': len(prep_inputs)} for inputs in prep_inputs]


class StreamingEchoWorker(EchoWorker):
    def _predict(self, prep_inputs):
        for word in prep_inputs['TEXT'].split():
            yield word


def answer_of(driver, inputs):
    """The Answer the ``driver`` gives ``inputs``: alone, in a batch beside seven good calls
    (their answers are checked too), or as a stream that must not start."""
    if driver == 'execute':
        return EchoWorker().execute(inputs, call_id=1)
    if driver == 'execute_stream':
        outcome = StreamingEchoWorker().execute_stream(inputs, call_id=1)
        assert isinstance(outcome, Answer), 'the stream started: {!r}'.format(outcome)
        return outcome
    good = [({'TEXT': b64('call {}'.format(n).encode()), 'BASE64_KEYS': ['TEXT']}, n, 'r{}'.format(n))
            for n in range(7)]
    calls = good[:3] + [(inputs, 99, 'bad')] + good[3:]
    answers = BatchedEchoWorker().execute_batch(calls)
    assert len(answers) == 8
    others = answers[:3] + answers[4:]
    assert [a.status for a in others] == [200] * 7, [a.body for a in others]
    assert [a.body['predict_result'] for a in others] == [
        {'TEXT': 'call {}'.format(n), 'SEEN_WITH': 7} for n in range(7)]
    return answers[3]


@pytest.mark.parametrize('driver', ['execute', 'execute_batch', 'execute_stream'])
@pytest.mark.parametrize('inputs, message', [
    ({'TEXT': 'not base64!', 'BASE64_KEYS': ['TEXT']}, "input 'TEXT' (in BASE64_KEYS) is not valid base64"),
    ({'TEXT': b64(b'\xff\xfe'), 'BASE64_KEYS': ['TEXT']},
     "input 'TEXT' (in BASE64_KEYS) decodes to bytes that are not utf-8 text"),
    ({'TEXT': b64(b'x'), 'BASE64_KEYS': ['TEXT'], 'ENCODING': 'klingon'}, "ENCODING 'klingon' is not a text encoding"),
], ids=['bad-base64', 'not-utf8', 'unknown-encoding'])
def test_one_undecodable_input_answers_400_to_its_own_call_alone_in_every_mode(driver, inputs, message):
    answer = answer_of(driver, inputs)

    assert answer.status == 400
    assert answer.body['ERROR'].startswith(message), answer.body['ERROR']


# -- the loader -------------------------------------------------------------------------------
WORKER_SOURCE = '''
    from bis_twisted import FlaskWorker

    _CONFIG = {{'K': 1}}

    class Helper:
        pass

    class {name}(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs
'''


@pytest.mark.parametrize('class_name', ['MyIrisModelWorker', 'myirismodelworker', 'MYIRISMODELWORKER'])
def test_loader_finds_the_class_named_after_the_file_in_any_case(endpoint_folder, class_name):
    endpoint_folder.write('my_iris_model', WORKER_SOURCE.format(name=class_name))

    cls, defaults = load_worker_class(str(endpoint_folder.path), 'my_iris_model')

    assert cls.__name__ == class_name
    assert issubclass(cls, FlaskWorker)
    assert defaults == {'K': 1}


def test_loader_answers_empty_defaults_for_a_file_without_config(endpoint_folder):
    endpoint_folder.write('plain', '''
        from bis_twisted import Worker

        class PlainWorker(Worker):
            pass
    ''')

    assert load_worker_class(str(endpoint_folder.path), 'plain')[1] == {}


def test_server_class_reuses_one_file_for_servers_with_their_own_config():
    # SERVER_CLASS: "dummy_model_demo2" for a second server "dummy_model_demo2-bis"
    first_cls, defaults = load_worker_class(ENDPOINTS_DIR, 'dummy_model_demo2')
    second_cls, _ = load_worker_class(ENDPOINTS_DIR, 'dummy_model_demo2')
    first = first_cls(default_config=defaults, upstream_config={'WEIGHT': 2, 'BIAS': 1})
    second = second_cls(default_config=defaults,
                        upstream_config={'SERVER_CLASS': 'dummy_model_demo2', 'WEIGHT': 3, 'BIAS': 0})

    assert first.execute({'INPUT_VALUE': 4}, 1).body['predict_result'] == {
        'dummy_model_predict': '4*2 + 1 = 9 PREDICTED'}
    assert second.execute({'INPUT_VALUE': 4}, 1).body['predict_result'] == {
        'dummy_model_predict': '4*3 + 0 = 12 PREDICTED'}


UNUSABLE_FILES = {
    'syntax-error': ('def broken(:\n', 'syntax error'),
    'import-error': ('import no_such_module_for_bis_tests\n', 'import failed'),
    'error-at-import': ('raise RuntimeError("no GPU here")\n', 'RuntimeError: no GPU here'),
    'no-class': ('from bis_twisted import FlaskWorker\nclass OtherWorker(FlaskWorker):\n    pass\n',
                 'no class named BrokenModelWorker'),
    'not-a-worker': ('class BrokenModelWorker:\n    pass\n', 'does not subclass bis_twisted.FlaskWorker'),
    'config-not-a-dict': ('from bis_twisted import FlaskWorker\n_CONFIG = [1]\n'
                          'class BrokenModelWorker(FlaskWorker):\n    pass\n', '_CONFIG must be a dict'),
    'missing-file': (None, 'does not exist'),
}


@pytest.mark.parametrize('source, message', list(UNUSABLE_FILES.values()), ids=list(UNUSABLE_FILES))
def test_an_unusable_endpoint_file_raises_one_line_naming_the_file(endpoint_folder, source, message):
    path = endpoint_folder.path / 'broken_model.py'
    if source is not None:
        path.write_text(source, encoding='utf-8')

    with pytest.raises(EndpointLoadError) as caught:
        load_worker_class(str(endpoint_folder.path), 'broken_model')

    text = str(caught.value)
    assert '\n' not in text
    assert text.startswith(str(path))
    assert message in text


# -- the README's demo endpoints, unchanged but for their import line -----------------------------
def demo_worker(server_class, config=None, notifications=None):
    cls, defaults = load_worker_class(ENDPOINTS_DIR, server_class)
    worker = cls(default_config=defaults, upstream_config=config or {},
                 notifications=notifications if notifications is not None else Notifications())
    worker.startup()
    return worker


def test_demo2_with_weight_2_and_bias_1_predicts_9_for_4():
    notes = Notifications()
    worker = demo_worker('dummy_model_demo2', {'WEIGHT': 2, 'BIAS': 1}, notes)

    outcome = worker.execute({'INPUT_VALUE': 4}, call_id=1)

    assert outcome == Answer(200, {'predict_result': {'dummy_model_predict': '4*2 + 1 = 9 PREDICTED'}})
    assert notes.snapshot()['1'][0]['NOTIF'].startswith('Predicting on usr_input: 4 using ')
    assert worker.log.prefix_log == '[DUMB]'


def test_demo2_uses_its_module_defaults_without_an_entry():
    outcome = demo_worker('dummy_model_demo2').execute({'INPUT_VALUE': 4}, call_id=1)

    assert outcome.body['predict_result'] == {'dummy_model_predict': '4*0 + 0 = 0 PREDICTED'}


def test_demo2_without_input_value_answers_400_from_its_pre_process():
    outcome = demo_worker('dummy_model_demo2').execute({'OTHER': 1}, call_id=1)

    assert outcome.status == 400
    details = outcome.body['DummyModelDemo2Worker_ERROR']
    assert (details['ERR_TYPE'], details['ERR_FUNC']) == ('ValueError', '_pre_process')
    assert details['ERR_MSG'] == 'INPUT_VALUE should be defined in inputs'
    assert details['ERR_FILE'] == 'dummy_model_demo2.py'  # relative to the endpoints folder
    assert outcome.body['ERROR'].endswith('(dummy_model_demo2.py:{})'.format(details['ERR_LINE']))


def test_demo1_answers_its_placeholder_model_with_the_language():
    worker = demo_worker('dummy_model_demo1')

    with_language = worker.execute({'INPUT_VALUE': 'king', 'LANGUAGE': 'en'}, call_id=1)
    default_language = worker.execute({'INPUT_VALUE': 'rege'}, call_id=2)

    assert with_language == Answer(200, {'predict_result': {
        'dummy_model_a_predict': 'same-word-always',
        'inputs': {'INPUT_VALUE': 'king', 'LANGUAGE': 'en'},
        'worker_ver': '1.2.1'}})
    assert default_language.body['predict_result']['inputs'] == {'INPUT_VALUE': 'rege', 'LANGUAGE': 'ro'}
    assert worker.log.prefix_log == '[DUMA]'


# -- the iris example endpoint, in-process (its HTTP answers are in test_server_process) ----------
@pytest.fixture(scope='module')
def iris_worker():
    return demo_worker('iris_classifier')


def test_iris_classifies_one_flower_and_a_batch(iris_worker):
    single = iris_worker.execute({'FEATURES': [5.1, 3.5, 1.4, 0.2]}, call_id=1)
    batch = iris_worker.execute({'FEATURES': [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}, call_id=2)

    assert single.status == 200
    assert [p['label'] for p in single.body['predict_result']['predictions']] == ['setosa']
    assert [(p['label'], p['class_id']) for p in batch.body['predict_result']['predictions']] == [
        ('setosa', 0), ('virginica', 2)]


@pytest.mark.parametrize('inputs, message', [
    ({}, 'FEATURES is missing'),
    ({'FEATURES': []}, 'FEATURES must be a non-empty list'),
    ({'FEATURES': '5.1,3.5,1.4,0.2'}, 'FEATURES must be a non-empty list'),
    ({'FEATURES': [5.1, 3.5, 1.4]}, 'FEATURES row 0 must be a list of 4 numbers'),
    ({'FEATURES': [[5.1, 3.5, 1.4, 0.2], [1, 2]]}, 'FEATURES row 1 must be a list of 4 numbers'),
    ({'FEATURES': [[5.1, 3.5, 1.4, 0.2], 7]}, 'FEATURES row 1 must be a list of 4 numbers'),
    ({'FEATURES': [5.1, 'wide', 1.4, 0.2]}, "FEATURES row 0: 'wide' is not a finite number"),
    ({'FEATURES': [5.1, True, 1.4, 0.2]}, 'FEATURES row 0: True is not a finite number'),
    ({'FEATURES': [5.1, float('nan'), 1.4, 0.2]}, 'FEATURES row 0: nan is not a finite number'),
], ids=['missing', 'empty', 'string', 'short-row', 'short-second-row', 'row-not-a-list',
        'text', 'bool', 'nan'])
def test_iris_rejects_malformed_features_with_400_saying_what_to_send(iris_worker, inputs, message):
    outcome = iris_worker.execute(inputs, call_id=1)

    assert outcome.status == 400
    assert message in outcome.body['ERROR']
    assert 'send "FEATURES": [sepal_length, sepal_width, petal_length, petal_width]' in outcome.body['ERROR']


def test_err_file_is_relative_to_the_endpoints_folder_also_when_it_was_given_relative(tmp_path, monkeypatch):
    folder = tmp_path / 'endpoints'
    folder.mkdir()
    (folder / 'crashy.py').write_text(
        'from bis_twisted import FlaskWorker\n\n'
        'class CrashyWorker(FlaskWorker):\n'
        '    def _pre_process(self, inputs):\n'
        '        print("crashy: got", inputs)\n'
        '        return 1 / 0\n')
    monkeypatch.chdir(tmp_path)
    worker_class, _ = load_worker_class('endpoints', 'crashy')  # as `--endpoints endpoints` loads it

    details = worker_class().execute({'X': 1}, call_id=1).body['CrashyWorker_ERROR']

    assert (details['ERR_TYPE'], details['ERR_FILE'], details['ERR_LINE']) == ('ZeroDivisionError', 'crashy.py', 6)


def test_iris_batched_answers_each_request_its_own_rows(iris_worker):
    calls = [({'FEATURES': [5.1, 3.5, 1.4, 0.2]}, 1, 'a'),
             ({'FEATURES': [[6.7, 3.0, 5.2, 2.3], [5.9, 2.8, 4.3, 1.3]]}, 2, 'b'),
             ({'FEATURES': [5.1, 'wide', 1.4, 0.2]}, 3, 'c'),
             ({'FEATURES': [[4.9, 3.0, 1.4, 0.2]]}, 4, 'd')]

    outcomes = iris_worker.execute_batch(calls)

    assert [o.status for o in outcomes] == [200, 200, 400, 200]
    labels = [[p['label'] for p in o.body['predict_result']['predictions']] for o in outcomes if o.status == 200]
    assert labels == [['setosa'], ['virginica', 'versicolor'], ['setosa']]
    assert "'wide' is not a finite number" in outcomes[2].body['ERROR']
    # the same rows one request at a time give the same probabilities
    alone = iris_worker.execute(calls[1][0], call_id=5)
    assert alone.body['predict_result'] == outcomes[1].body['predict_result']
