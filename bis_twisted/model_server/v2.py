"""The model server's side of the Open Inference Protocol (KServe V2): typed inputs in, typed
outputs out, around the same pipeline a ``/run`` request takes.

The gateway sends a V2 request as a ``/run`` body (its inputs by name, nested as their shape)
with ``V2_MARKER``. ``take_v2`` takes that marker out and turns each input into a numpy array
of its datatype and shape (numpy installed), or leaves it as nested lists (not installed);
an input sent as its one value (a shape ``[]``) becomes a numpy scalar, or stays that value.
BYTES elements are ``str``. Nothing else about the request changes: it queues, batches (with
``/run`` requests too) and runs as one.

``V2Call.answer`` turns the finished answer into V2's: each key of ``predict_result`` an output
tensor (numpy arrays and numpy scalars with their dtype and shape, numbers and booleans and
rectangular lists of them typed, strings and any other JSON value as BYTES), the answer's
other fields in ``parameters``, an error as ``{"error": ...}``.
"""

import base64
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import BadRequest
from ..shared.tensors import DATATYPES, V2_MARKER
from ..shared.web import dumps_spaced

PREDICT_RESULT = 'predict_result'
MODEL_VERSION = '1'
_numpy = None


def _np():
    """numpy, or None when it is not installed (imported on the first V2 request)."""
    global _numpy
    if _numpy is None:
        try:
            import numpy
        except ImportError:
            numpy = False
        _numpy = numpy
    return _numpy or None


def take_v2(inputs: Dict[str, Any], streaming: bool = False) -> Optional['V2Call']:
    """For a V2 request (``inputs`` holds ``V2_MARKER``): the marker taken out, each input typed
    in place, and the ``V2Call`` whose ``answer`` shapes the answer; None for a ``/run``
    request. ``BadRequest`` for an input that does not fit its datatype or shape, and for a
    streaming endpoint (V2's infer answers once)."""
    marker = inputs.pop(V2_MARKER, None)
    if marker is None:
        return None
    if streaming:
        raise BadRequest('this model streams its answer, which V2 infer cannot carry; POST '
                         '/v2/models/<name>/generate_stream (server-sent events) or /run to read it')
    if not isinstance(marker, dict) or not isinstance(marker.get('inputs'), dict):
        raise BadRequest('{} must be an object {{"inputs": {{name: [datatype, shape]}}, ...}}'.format(V2_MARKER))
    for name, spec in marker['inputs'].items():
        if name not in inputs:
            raise BadRequest('input {!r} is named in {} but not sent'.format(name, V2_MARKER))
        inputs[name] = typed_input(name, inputs[name], spec)
    return V2Call(model=str(marker.get('model', '')), request_id=marker.get('id'),
                  outputs=marker.get('outputs'), output_types=marker.get('output_types') or {})


def typed_input(name: str, value: Any, spec: Any) -> Any:
    """``value`` (nested lists, or one value for shape ``[]``) as numpy of the datatype, when
    numpy is installed."""
    if not (isinstance(spec, list) and len(spec) == 2 and spec[0] in DATATYPES and isinstance(spec[1], list)):
        raise BadRequest('input {!r}: its type must be [datatype, shape], got {!r}'.format(name, spec))
    datatype, shape = DATATYPES[spec[0]], spec[1]
    np = _np()
    if np is None:
        return value
    try:
        if shape and 0 in shape:  # no elements: sent as [] whatever the shape
            return np.empty(shape, dtype=datatype.numpy)
        if datatype.kind == 'bytes':
            if not shape:
                return value
            array = np.array(value, dtype=object)  # str elements, of any length
        else:
            array = np.asarray(value, dtype=datatype.numpy)
        if not shape:
            return array[()] if array.ndim == 0 else array.reshape(())[()]
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise BadRequest('input {!r}: cannot be made a {} tensor: {}'.format(name, datatype.name, exc)) from None
    if list(array.shape) != list(shape):
        raise BadRequest('input {!r}: shape {} was declared, the data nests as {}'.format(
            name, shape, list(array.shape)))
    return array


class V2Call:
    """A V2 request in the model server: what its answer needs."""

    def __init__(self, model: str, request_id: Any = None, outputs: Optional[Sequence[str]] = None,
                 output_types: Optional[Mapping[str, str]] = None) -> None:
        self.model = model
        self.request_id = request_id
        self.outputs = list(outputs) if outputs is not None else None
        self.output_types = dict(output_types or {})

    def answer(self, status: int, body: Mapping[str, Any]) -> Tuple[int, Dict[str, Any]]:
        """``(status, V2 body)`` of a finished answer ``body`` (``predict_result`` and the
        answer's fields, or ``ERROR``)."""
        if status != 200:
            return status, {'error': str(body.get('ERROR') or body.get('error') or 'HTTP {}'.format(status))}
        try:
            outputs = output_tensors(body.get(PREDICT_RESULT), self.outputs, self.output_types)
        except BadRequest as exc:
            return exc.status, {'error': exc.message}
        except (TypeError, ValueError) as exc:
            return 500, {'error': 'the answer cannot be sent as V2 output tensors: {}'.format(exc)}
        answer = {'model_name': self.model, 'model_version': MODEL_VERSION, 'outputs': outputs,
                  'parameters': {k: v for k, v in body.items()
                                 if k != PREDICT_RESULT and isinstance(v, (str, int, float, bool))}}
        if self.request_id is not None:
            answer['id'] = self.request_id
        return status, answer


def output_tensors(result: Any, requested: Optional[Sequence[str]] = None,
                   output_types: Optional[Mapping[str, str]] = None) -> List[Dict[str, Any]]:
    """``predict_result`` as V2 output tensors: a dict's keys are the outputs' names; any other
    value is one output named ``predict_result``. ``requested``: only these, in that order
    (``BadRequest`` for a name the answer does not hold)."""
    values = result if isinstance(result, dict) else {PREDICT_RESULT: result}
    names = list(values) if requested is None else list(requested)
    missing = [name for name in names if name not in values]
    if missing:
        raise BadRequest('the model answered no output {}; it answers: {}'.format(
            ', '.join(repr(m) for m in missing), ', '.join(values) or 'none'))
    types = output_types or {}
    return [output_tensor(name, values[name], types.get(name)) for name in names]


def output_tensor(name: str, value: Any, declared: Optional[str] = None) -> Dict[str, Any]:
    """One output tensor ``{"name", "datatype", "shape", "data"}`` (data flat, row-major).
    ``declared`` (the model's ``V2_OUTPUTS`` datatype) is applied where the values fit it."""
    datatype, shape, data = _numpy_tensor(value) if _is_numpy(value) else _python_tensor(value)
    if declared in DATATYPES and declared != datatype:
        datatype, data = _as_declared(datatype, data, DATATYPES[declared])
    return {'name': name, 'datatype': datatype, 'shape': shape, 'data': data}


def _is_numpy(value: Any) -> bool:
    return hasattr(value, 'dtype') and hasattr(value, 'shape') and hasattr(value, 'tolist')


_NUMPY_KINDS = {'b': 'BOOL', 'u': 'UINT', 'i': 'INT', 'f': 'FP'}


def _numpy_tensor(value: Any) -> Tuple[str, List[int], List[Any]]:
    shape = [int(d) for d in value.shape] or [1]
    kind = _NUMPY_KINDS.get(value.dtype.kind)
    flat = value.reshape(-1).tolist()
    if kind is None or (kind != 'BOOL' and kind + str(value.dtype.itemsize * 8) not in DATATYPES):
        return 'BYTES', shape, [_element_text(v) for v in flat]
    return kind if kind == 'BOOL' else kind + str(value.dtype.itemsize * 8), shape, flat


def _python_tensor(value: Any) -> Tuple[str, List[int], List[Any]]:
    if not isinstance(value, (list, tuple)):
        return _scalar_type(value), [1], [value if _scalar_type(value) != 'BYTES' else _element_text(value)]
    shape, flat = _rectangle(value)
    if flat is not None:
        kinds = {_scalar_type(v) for v in flat}
        if len(kinds) == 1 or kinds == {'INT64', 'FP64'}:
            datatype = 'FP64' if len(kinds) == 2 else (kinds.pop() if kinds else 'FP64')
            if datatype != 'BYTES':
                return datatype, shape, [float(v) for v in flat] if datatype == 'FP64' else flat
    # ragged, mixed, or holding objects: one BYTES element per item of the top-level list
    return 'BYTES', [len(value)], [_element_text(v) for v in value]


def _scalar_type(value: Any) -> str:
    if isinstance(value, bool):
        return 'BOOL'
    if isinstance(value, int):
        return 'INT64' if -(1 << 63) <= value < (1 << 63) else 'BYTES'
    if isinstance(value, float):
        return 'FP64'
    if _is_numpy(value):  # a numpy scalar inside a list
        return _numpy_tensor(value)[0]
    return 'BYTES'


def _rectangle(value: Any) -> Tuple[List[int], Optional[List[Any]]]:
    """The shape of nested lists and their elements, flat; ``(shape, None)`` when ragged or
    when an element is itself a dict."""
    shape: List[int] = []
    probe = value
    while isinstance(probe, (list, tuple)):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    level: List[Any] = [value]
    for size in shape:
        following: List[Any] = []
        for item in level:
            if not isinstance(item, (list, tuple)) or len(item) != size:
                return shape, None
            following.extend(item)
        level = following
    if any(isinstance(v, (list, tuple, dict)) for v in level):
        return shape, None
    return shape, [v.item() if _is_numpy(v) else v for v in level]


def _element_text(value: Any) -> str:
    """A BYTES element: a string as it is, bytes as UTF-8 text (base64 if they are not), any
    other value as its JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode('utf-8')
        except UnicodeDecodeError:
            return base64.b64encode(value).decode('ascii')
    return dumps_spaced(value).decode('utf-8')


def _as_declared(datatype: str, data: List[Any], declared: Any) -> Tuple[str, List[Any]]:
    """``data`` typed as the declared datatype where every element fits it, else as it was."""
    if declared.kind == 'bytes':
        return declared.name, [_element_text(v) for v in data]
    if declared.kind == 'float' and datatype != 'BYTES' and datatype != 'BOOL':
        return declared.name, [float(v) for v in data]
    if declared.kind == 'int' and all(isinstance(v, int) and not isinstance(v, bool) or
                                      isinstance(v, float) and v.is_integer() for v in data):
        ints = [int(v) for v in data]
        if all(declared.low <= v <= declared.high for v in ints):
            return declared.name, ints
    if declared.kind == 'bool' and all(isinstance(v, bool) for v in data):
        return declared.name, data
    return datatype, data
