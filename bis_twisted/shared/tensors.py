"""Tensors of the Open Inference Protocol (KServe V2), in JSON: what both processes agree on.

A V2 tensor is ``{"name", "datatype", "shape", "data"}``: ``data`` holds the elements in
row-major order, flat or nested. The gateway checks each input tensor here and sends the
model server a ``/run`` body: each input under its name as nested lists of the tensor's
shape (a scalar input as its one value), so ``INPUT_SCHEMA`` checks it as it checks a
``/run`` request, plus ``V2_MARKER``, which tells the model server how to type the inputs
and that it answers in V2's shape.

Pure Python: the gateway needs no numpy.
"""

import math
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

# the /run body's key that carries a V2 request's tensor types (the model server takes it out)
V2_MARKER = 'BIS_V2'


class Datatype(NamedTuple):
    name: str
    kind: str  # 'bool', 'int', 'float' or 'bytes'
    low: Optional[int] = None  # the range of an integer type
    high: Optional[int] = None
    numpy: str = ''  # the numpy dtype's name


def _int(name, bits, signed):
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return Datatype(name, 'int', low, high, ('int' if signed else 'uint') + str(bits))


DATATYPES: Dict[str, Datatype] = {d.name: d for d in (
    Datatype('BOOL', 'bool', numpy='bool'),
    _int('UINT8', 8, False), _int('UINT16', 16, False), _int('UINT32', 32, False), _int('UINT64', 64, False),
    _int('INT8', 8, True), _int('INT16', 16, True), _int('INT32', 32, True), _int('INT64', 64, True),
    Datatype('FP16', 'float', numpy='float16'), Datatype('FP32', 'float', numpy='float32'),
    Datatype('FP64', 'float', numpy='float64'),
    Datatype('BYTES', 'bytes', numpy='object'),
)}
DATATYPE_NAMES = ', '.join(DATATYPES)
MAX_RANK = 32  # numpy's own limit is 64; nested lists much deeper than this strain JSON encoders


class TensorError(ValueError):
    """A tensor that does not hold what it says: the message names the tensor and the rule."""


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def check_shape(name: str, shape: Any) -> List[int]:
    """``shape`` as a list of at most ``MAX_RANK`` dimensions, each an integer >= 0."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise TensorError('input {!r}: "shape" must be a list of integers >= 0, got {}'.format(name, repr(shape)[:200]))
    if len(shape) > MAX_RANK:
        raise TensorError('input {!r}: "shape" has {} dimensions; at most {}'.format(name, len(shape), MAX_RANK))
    return shape


def datatype_of(name: str, text: Any) -> Datatype:
    datatype = DATATYPES.get(text) if isinstance(text, str) else None
    if datatype is None:
        raise TensorError('input {!r}: unknown datatype {!r}; one of {}'.format(name, text, DATATYPE_NAMES))
    return datatype


def flat_data(name: str, data: Any) -> List[Any]:
    """The elements of ``data`` in row-major order, whether sent flat or nested."""
    if not isinstance(data, list):
        raise TensorError('input {!r}: "data" must be a list (flat, or nested as the shape), got {}'.format(
            name, type(data).__name__))
    if not any(isinstance(item, list) for item in data):
        return data
    flat, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def check_elements(name: str, datatype: Datatype, data: List[Any]) -> None:
    """Every element fits ``datatype``: a bool for BOOL, an integer in range for the integer
    types, a number for FP16/32/64, a string for BYTES."""
    kind = datatype.kind
    for index, value in enumerate(data):
        if kind == 'float':
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind == 'int':
            ok = isinstance(value, int) and not isinstance(value, bool) and datatype.low <= value <= datatype.high
        elif kind == 'bool':
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise TensorError('input {!r}: element {} ({!r}) is not {}'.format(name, index, value, _kind_text(datatype)))


def _kind_text(datatype: Datatype) -> str:
    if datatype.kind == 'int':
        return 'an integer in [{}, {}] ({})'.format(datatype.low, datatype.high, datatype.name)
    return {'float': 'a number', 'bool': 'true or false', 'bytes': 'a string'}[datatype.kind] + \
        ' ({})'.format(datatype.name)


def nest(flat: List[Any], shape: Sequence[int]) -> Any:
    """``flat`` (row-major) as nested lists of ``shape``; a shape of rank 0 or 1, or of no
    elements (``[2, 0]``), is ``flat`` itself."""
    if len(shape) <= 1 or not flat:
        return flat
    rows: List[Any] = flat
    for size in reversed(shape[1:]):
        rows = [rows[i:i + size] for i in range(0, len(rows), size)]
    return rows


class Tensor(NamedTuple):
    """One checked input tensor."""

    name: str
    datatype: Datatype
    shape: List[int]
    data: List[Any]  # flat


def read_input(tensor: Any) -> Tensor:
    """A V2 input tensor (the JSON object) checked: name, datatype, shape, data of as many
    elements as the shape says, each fitting the datatype. ``TensorError`` says what is wrong."""
    if not isinstance(tensor, dict):
        raise TensorError('each of "inputs" must be an object {{"name", "shape", "datatype", "data"}}, got {}'.format(
            type(tensor).__name__))
    name = tensor.get('name')
    if not isinstance(name, str) or not name:
        raise TensorError('an input has no "name" (a non-empty string)')
    parameters = tensor.get('parameters')
    if isinstance(parameters, dict) and 'binary_data_size' in parameters:
        raise TensorError('input {!r} is sent as binary data (binary_data_size); this server takes tensors as '
                          'JSON only: send "data" in the JSON body (tritonclient: '
                          'set_data_from_numpy(array, binary_data=False))'.format(name))
    for key in ('datatype', 'shape', 'data'):
        if key not in tensor:
            raise TensorError('input {!r} has no {!r}'.format(name, key))
    datatype = datatype_of(name, tensor['datatype'])
    shape = check_shape(name, tensor['shape'])
    data = flat_data(name, tensor['data'])
    if len(data) != element_count(shape):
        raise TensorError('input {!r}: shape {} holds {} elements, "data" has {}'.format(
            name, shape, element_count(shape), len(data)))
    check_elements(name, datatype, data)
    return Tensor(name, datatype, shape, data)


def shape_fits(shape: Sequence[int], declared: Sequence[int]) -> bool:
    """``shape`` matches ``declared``, where -1 stands for any size."""
    return len(shape) == len(declared) and all(d == -1 or d == s for s, d in zip(shape, declared))


# -- the marker ------------------------------------------------------------------------------
def marker(tensors: Sequence[Tuple[str, str, List[int]]], outputs: Optional[List[str]], request_id: Any,
           output_types: Mapping[str, str]) -> Dict[str, Any]:
    """The ``V2_MARKER`` value: the inputs' ``[datatype, shape]`` by name (a shape ``[]`` for an
    input sent as its one value), the outputs asked for (None: all), the request's ``id``,
    and the datatypes the model declares for its outputs."""
    body: Dict[str, Any] = {'inputs': {name: [datatype, shape] for name, datatype, shape in tensors}}
    if outputs is not None:
        body['outputs'] = outputs
    if request_id is not None:
        body['id'] = request_id
    if output_types:
        body['output_types'] = dict(output_types)
    return body
