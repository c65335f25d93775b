"""The Open Inference Protocol's tensors without a process: the gateway's checks and its
``/run`` body (``shared.tensors``, ``gateway.v2_models``), the metadata read from an endpoint file,
and the model server's typing of inputs and outputs (``model_server.v2``), with numpy and
without."""

import json

import numpy as np
import pytest

from bis_twisted.errors import BadRequest
from bis_twisted.gateway.v2_models import ModelSpec, TensorSpec, derived_tensors, infer_payload, model_spec
from bis_twisted.model_server import v2 as server_v2
from bis_twisted.model_server.v2 import V2Call, output_tensor, output_tensors, take_v2
from bis_twisted.shared.tensors import V2_MARKER, TensorError, flat_data, nest, read_input


def tensor(name='X', datatype='FP32', shape=(1, 4), data=None):
    count = int(np.prod(shape))
    return {'name': name, 'datatype': datatype, 'shape': list(shape),
            'data': data if data is not None else [float(i) for i in range(count)]}


# -- shared.tensors: what the gateway checks -------------------------------------------------
def test_flat_and_nested_data_read_the_same():
    assert read_input(tensor(shape=(2, 2), data=[1, 2, 3, 4])).data == [1, 2, 3, 4]
    assert read_input(tensor(shape=(2, 2), data=[[1, 2], [3, 4]])).data == [1, 2, 3, 4]
    assert flat_data('X', [[[1], [2]], [[3], [4]]]) == [1, 2, 3, 4]


@pytest.mark.parametrize('bad, said', [
    (tensor(datatype='FLOAT'), "unknown datatype 'FLOAT'"),
    (tensor(shape=(1, 5), data=[1.0] * 4), 'shape [1, 5] holds 5 elements, "data" has 4'),
    (tensor(shape=(1, -4)), '"shape" must be a list of integers >= 0'),
    (tensor(datatype='INT8', shape=(1,), data=[300]), 'is not an integer in [-128, 127] (INT8)'),
    (tensor(datatype='UINT8', shape=(1,), data=[-1]), 'is not an integer in [0, 255] (UINT8)'),
    (tensor(datatype='INT64', shape=(1,), data=[1.5]), 'is not an integer'),
    (tensor(datatype='INT64', shape=(1,), data=[True]), 'is not an integer'),
    (tensor(datatype='BOOL', shape=(1,), data=[1]), 'is not true or false (BOOL)'),
    (tensor(datatype='FP32', shape=(1,), data=['1.0']), 'is not a number (FP32)'),
    (tensor(datatype='BYTES', shape=(1,), data=[1]), 'is not a string (BYTES)'),
    (dict(tensor(), parameters={'binary_data_size': 16}), 'is sent as binary data'),
    ({'datatype': 'FP32', 'shape': [1], 'data': [1.0]}, 'no "name"'),
    ({'name': 'X', 'shape': [1], 'data': [1.0]}, "has no 'datatype'"),
    (tensor(data=7), '"data" must be a list'),
    (tensor(shape=[1] * 33, data=[1.0]), '"shape" has 33 dimensions; at most 32'),
])
def test_a_tensor_that_does_not_hold_what_it_says_is_refused_naming_the_rule(bad, said):
    with pytest.raises(TensorError) as raised:
        read_input(bad)
    assert said in str(raised.value)


def test_every_datatype_of_the_protocol_reads():
    samples = {'BOOL': [True], 'UINT8': [255], 'UINT16': [65535], 'UINT32': [2 ** 32 - 1], 'UINT64': [2 ** 64 - 1],
               'INT8': [-128], 'INT16': [-32768], 'INT32': [-2 ** 31], 'INT64': [-2 ** 63], 'FP16': [0.5],
               'FP32': [1], 'FP64': [2.5], 'BYTES': ['text']}
    for datatype, data in samples.items():
        assert read_input(tensor(datatype=datatype, shape=(1,), data=data)).datatype.name == datatype


def test_nest_builds_row_major_lists_of_the_shape():
    assert nest([1, 2, 3, 4, 5, 6], [2, 3]) == [[1, 2, 3], [4, 5, 6]]
    assert nest(list(range(8)), [2, 2, 2]) == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    assert nest([1, 2], [2]) == [1, 2]
    assert nest([], [2, 0]) == [] and nest([], [2 ** 62, 0]) == []  # no elements: nothing to nest
    assert np.array(nest(list(range(24)), [2, 3, 4])).tolist() == np.arange(24).reshape(2, 3, 4).tolist()


# -- gateway.v2_models: the metadata and the /run body ------------------------------------------------
IRIS_LIKE = '''
INPUT_SCHEMA = {"type": "object", "properties": {
    "FEATURES": {"anyOf": [
        {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
        {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}}]},
    "SCALE": {"type": ["integer", "null"]},
    "NAME": {"type": "string"},
    "OPTIONS": {"type": "object"}}}
OUTPUT_SCHEMA = {"type": "object", "properties": {
    "labels": {"type": "array", "items": {"type": "string"}},
    "details": {"type": "array", "items": {"type": "object"}},
    "score": {"type": "number"}}}
'''


def test_metadata_is_derived_from_the_schemas_where_they_describe_numbers_strings_and_arrays(tmp_path):
    path = tmp_path / 'model.py'
    path.write_text(IRIS_LIKE)
    spec = model_spec(str(path))
    assert [s.metadata() for s in spec.inputs] == [
        {'name': 'FEATURES', 'datatype': 'FP64', 'shape': [-1, 4]},
        {'name': 'SCALE', 'datatype': 'INT64', 'shape': [1]},
        {'name': 'NAME', 'datatype': 'BYTES', 'shape': [1]}]  # an object input is no tensor
    assert [s.metadata() for s in spec.outputs] == [
        {'name': 'labels', 'datatype': 'BYTES', 'shape': [-1]},
        {'name': 'details', 'datatype': 'BYTES', 'shape': [-1]},  # objects answer as their JSON text
        {'name': 'score', 'datatype': 'FP64', 'shape': [1]}]
    assert not spec.declared_inputs and not spec.declared_outputs


def test_declared_v2_inputs_and_outputs_win_over_the_schemas(tmp_path):
    path = tmp_path / 'model.py'
    path.write_text(IRIS_LIKE + 'V2_INPUTS = [{"name": "FEATURES", "datatype": "FP32", "shape": [-1, 4]}]\n'
                                'V2_OUTPUTS = [{"name": "score", "datatype": "FP32", "shape": [1]}]\n')
    spec = model_spec(str(path))
    assert spec.inputs == (TensorSpec('FEATURES', 'FP32', (-1, 4)),) and spec.declared_inputs
    assert spec.outputs == (TensorSpec('score', 'FP32', (1,)),) and spec.declared_outputs


def test_a_malformed_declaration_is_logged_and_the_schema_used(tmp_path):
    path = tmp_path / 'model.py'
    path.write_text(IRIS_LIKE + 'V2_INPUTS = [{"name": "FEATURES", "datatype": "FLOAT", "shape": [4]}]\n')
    warned = []

    class Log:
        def warn(self, text, **fields):
            warned.append(text.format(**fields))

    spec = model_spec(str(path), Log())
    assert not spec.declared_inputs and spec.inputs[0].datatype == 'FP64'
    assert 'V2_INPUTS' in warned[0] and str(path) in warned[0] and "'FLOAT'" in warned[0]


def body_of(payload):
    return json.loads(payload)


def test_the_run_body_nests_each_input_and_marks_the_types():
    spec = ModelSpec(inputs=[TensorSpec('X', 'FP32', (-1, 4))], declared_inputs=True)
    body = body_of(infer_payload('m', {'id': 'r1', 'inputs': [tensor(shape=(2, 4))],
                                       'outputs': [{'name': 'y'}]}, spec))
    assert body['SIGNATURE'] == 'm'
    assert body['X'] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    assert body[V2_MARKER] == {'inputs': {'X': ['FP32', [2, 4]]}, 'outputs': ['y'], 'id': 'r1', 'model': 'm'}


def test_an_input_the_schema_types_as_one_value_is_sent_as_that_value():
    spec = ModelSpec(inputs=derived_tensors({'type': 'object', 'properties': {'INPUT_VALUE': {'type': 'number'}}}))
    body = body_of(infer_payload('demo', {'inputs': [tensor('INPUT_VALUE', 'INT64', (1,), [3])]}, spec))
    assert body['INPUT_VALUE'] == 3 and body[V2_MARKER]['inputs'] == {'INPUT_VALUE': ['INT64', []]}
    # more than one element is sent as the list it is (INPUT_SCHEMA then says what is wrong)
    body = body_of(infer_payload('demo', {'inputs': [tensor('INPUT_VALUE', 'INT64', (2,), [3, 4])]}, spec))
    assert body['INPUT_VALUE'] == [3, 4]


@pytest.mark.parametrize('request_body, said', [
    ({'inputs': [tensor(datatype='FP64')]}, "datatype FP64, model 'm' takes FP32"),
    ({'inputs': [tensor(shape=(1, 5), data=[1.0] * 5)]}, "shape [1, 5], model 'm' takes [-1, 4]"),
    ({'inputs': [tensor(), tensor('Y')]}, "model 'm' has no input 'Y'; its inputs: X"),
    ({'inputs': [tensor(), tensor()]}, 'an input is sent twice: X'),
    ({'inputs': []}, '"inputs" must be a non-empty list'),
    ({'inputs': [tensor(name='SIGNATURE')]}, "may not be named 'SIGNATURE'"),
    ({'inputs': [tensor()], 'id': 5}, '"id" must be a string'),
    ({'inputs': [tensor()], 'outputs': [{'name': 'nope'}]}, "model 'm' has no output 'nope'; its outputs: y"),
    ({'inputs': [tensor()], 'outputs': 'y'}, '"outputs" must be a list'),
])
def test_a_request_the_declared_metadata_refuses_is_a_400(request_body, said):
    spec = ModelSpec(inputs=[TensorSpec('X', 'FP32', (-1, 4))], outputs=[TensorSpec('y', 'FP32', (1,))],
                     declared_inputs=True, declared_outputs=True)
    with pytest.raises(BadRequest) as raised:
        infer_payload('m', request_body, spec)
    assert said in raised.value.message


# -- model_server.v2: typed inputs -------------------------------------------------------------
def marked(**inputs):
    return {name: value for name, (value, _) in inputs.items()} | {
        V2_MARKER: {'model': 'm', 'inputs': {name: spec for name, (_, spec) in inputs.items()}}}


def test_inputs_become_numpy_arrays_of_their_datatype_and_shape():
    inputs = marked(X=([[1, 2], [3, 4]], ['FP32', [2, 2]]), N=(7, ['INT64', []]), S=(['a', 'b'], ['BYTES', [2]]),
                    B=([True], ['BOOL', [1]]))
    call = take_v2(inputs)
    assert V2_MARKER not in inputs and isinstance(call, V2Call)
    assert inputs['X'].dtype == np.float32 and inputs['X'].shape == (2, 2)
    assert inputs['N'] == 7 and inputs['N'].dtype == np.int64 and np.ndim(inputs['N']) == 0
    assert inputs['S'].dtype == object and inputs['S'].tolist() == ['a', 'b']
    assert inputs['B'].dtype == np.bool_
    empty = marked(E=([], ['FP32', [2 ** 40, 0]]))
    take_v2(empty)
    assert empty['E'].shape == (2 ** 40, 0) and empty['E'].dtype == np.float32


def test_without_numpy_inputs_stay_nested_lists(monkeypatch):
    monkeypatch.setattr(server_v2, '_numpy', False)
    inputs = marked(X=([[1.0, 2.0]], ['FP32', [1, 2]]), S=('word', ['BYTES', []]))
    take_v2(inputs)
    assert inputs == {'X': [[1.0, 2.0]], 'S': 'word'}


def test_a_run_request_is_left_alone_and_a_stream_refuses_v2():
    inputs = {'INPUT_VALUE': 3}
    assert take_v2(inputs) is None and inputs == {'INPUT_VALUE': 3}
    with pytest.raises(BadRequest) as raised:
        take_v2(marked(X=(1, ['INT64', []])), streaming=True)
    assert 'streams its answer' in raised.value.message


def test_an_input_that_does_not_fit_its_type_is_a_400():
    with pytest.raises(BadRequest) as raised:
        take_v2(marked(X=([['a']], ['FP32', [1, 1]])))
    assert "input 'X': cannot be made a FP32 tensor" in raised.value.message
    with pytest.raises(BadRequest) as raised:
        take_v2(marked(X=([1, 2, 3], ['FP32', [1, 3]])))
    assert 'shape [1, 3] was declared, the data nests as [3]' in raised.value.message
    with pytest.raises(BadRequest) as raised:  # a body sent to /run by hand, marker and all
        take_v2(marked(X=([1, 2], ['INT64', []])))
    assert "input 'X': cannot be made a INT64 tensor" in raised.value.message
    with pytest.raises(BadRequest) as raised:
        take_v2({'X': 1, V2_MARKER: {'inputs': {'X': 'INT64'}}})
    assert 'its type must be [datatype, shape]' in raised.value.message


# -- model_server.v2: typed outputs ----------------------------------------------------------
@pytest.mark.parametrize('value, datatype, shape, data', [
    (np.arange(6, dtype=np.float32).reshape(2, 3), 'FP32', [2, 3], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
    (np.array([1, 2], dtype=np.uint16), 'UINT16', [2], [1, 2]),
    (np.float16(0.5), 'FP16', [1], [0.5]),
    (np.array([True, False]), 'BOOL', [2], [True, False]),
    (np.array(['a', 'bc']), 'BYTES', [2], ['a', 'bc']),
    (7, 'INT64', [1], [7]),
    (2.5, 'FP64', [1], [2.5]),
    (True, 'BOOL', [1], [True]),
    ('text', 'BYTES', [1], ['text']),
    ([[1, 2], [3, 4]], 'INT64', [2, 2], [1, 2, 3, 4]),
    ([1, 2.5], 'FP64', [2], [1.0, 2.5]),
    (['a', 'b'], 'BYTES', [2], ['a', 'b']),
    ([{'k': 1}, {'k': 2}], 'BYTES', [2], ['{"k": 1}', '{"k": 2}']),
    ([[1, 2], [3]], 'BYTES', [2], ['[1, 2]', '[3]']),
    ({'k': [1]}, 'BYTES', [1], ['{"k": [1]}']),
    (None, 'BYTES', [1], ['null']),
])
def test_an_answer_value_becomes_a_typed_tensor(value, datatype, shape, data):
    assert output_tensor('y', value) == {'name': 'y', 'datatype': datatype, 'shape': shape, 'data': data}


def test_a_declared_output_datatype_is_applied_where_the_values_fit():
    assert output_tensor('y', [1, 2], 'FP32')['datatype'] == 'FP32'
    assert output_tensor('y', [1.0, 2.0], 'INT32') == {'name': 'y', 'datatype': 'INT32', 'shape': [2], 'data': [1, 2]}
    assert output_tensor('y', [1.5], 'INT32')['datatype'] == 'FP64'  # it does not fit: not claimed
    assert output_tensor('y', 3, 'BYTES')['data'] == ['3']


def test_outputs_follow_the_request_and_a_missing_one_is_a_400():
    result = {'a': 1, 'b': 'x'}
    assert [o['name'] for o in output_tensors(result)] == ['a', 'b']
    assert [o['name'] for o in output_tensors(result, ['b'])] == ['b']
    assert output_tensors([1, 2])[0]['name'] == 'predict_result'
    with pytest.raises(BadRequest) as raised:
        output_tensors(result, ['c'])
    assert "no output 'c'; it answers: a, b" in raised.value.message


def test_the_answer_has_the_protocol_shape_with_the_fields_in_parameters():
    call = V2Call(model='m', request_id='r1', outputs=None, output_types={'y': 'FP32'})
    status, body = call.answer(200, {'predict_result': {'y': [1, 2]}, 'batch_size': 3, 'worker_id': 0,
                                     'hostname': 'h', 'nested': {'no': 1}})
    assert status == 200
    assert body == {'model_name': 'm', 'model_version': '1', 'id': 'r1',
                    'outputs': [{'name': 'y', 'datatype': 'FP32', 'shape': [2], 'data': [1.0, 2.0]}],
                    'parameters': {'batch_size': 3, 'worker_id': 0, 'hostname': 'h'}}
    assert call.answer(400, {'ERROR': 'bad input', 'worker_id': 0}) == (400, {'error': 'bad input'})
    assert V2Call('m', outputs=['z']).answer(200, {'predict_result': {'y': 1}})[0] == 400
