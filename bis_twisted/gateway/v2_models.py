"""What each model of the Open Inference Protocol takes and answers (its tensor metadata), and
the ``/run`` body a V2 infer request becomes once checked against it. Gateway side.

A model's metadata comes from its endpoint file, read without importing it: ``V2_INPUTS`` /
``V2_OUTPUTS`` (lists of ``{"name", "datatype", "shape"}``, -1 for a free dimension) when
declared, and then enforced on each request; else derived from ``INPUT_SCHEMA`` /
``OUTPUT_SCHEMA`` where they describe numbers, strings and arrays, and only advisory
(``INPUT_SCHEMA`` itself is checked by the model server). An input a schema types as one
number, string or boolean is a tensor of one element (shape ``[1]``) sent on as that value.
"""

import attr

from ..errors import BadRequest
from ..protocol import SIGNATURE
from ..shared.schemas import INPUT_SCHEMA, OUTPUT_SCHEMA, TRANSPORT_KEYS, declared_literals
from ..shared.tensors import DATATYPES, V2_MARKER, TensorError, marker, nest, read_input, shape_fits
from ..shared.web import forward_payload

V2_INPUTS = 'V2_INPUTS'
V2_OUTPUTS = 'V2_OUTPUTS'


@attr.s(frozen=True)
class TensorSpec:
    """A tensor of a model's metadata. ``scalar``: sent to the worker as its one value."""

    name = attr.ib()
    datatype = attr.ib()
    shape = attr.ib(converter=tuple)
    scalar = attr.ib(default=False)

    def metadata(self):
        return {'name': self.name, 'datatype': self.datatype, 'shape': list(self.shape)}


@attr.s(frozen=True)
class ModelSpec:
    """What a model takes and answers. ``declared_inputs``: from ``V2_INPUTS``, so each
    request's input names, datatypes and shapes are checked against it."""

    inputs = attr.ib(default=(), converter=tuple)
    outputs = attr.ib(default=(), converter=tuple)
    declared_inputs = attr.ib(default=False)
    declared_outputs = attr.ib(default=False)

    def input(self, name):
        return next((spec for spec in self.inputs if spec.name == name), None)


class DeclarationError(ValueError):
    """A ``V2_INPUTS`` / ``V2_OUTPUTS`` that is not a list of tensor metadata."""


def model_spec(path, log=None):
    """The ``ModelSpec`` of the endpoint file at ``path`` (an empty one when it has none); a
    malformed ``V2_INPUTS``/``V2_OUTPUTS`` is logged (naming the file and the key) and the
    schemas are used instead."""
    found = declared_literals(path, (V2_INPUTS, V2_OUTPUTS, INPUT_SCHEMA, OUTPUT_SCHEMA))
    sides = {}
    for key, schema_key, objects in ((V2_INPUTS, INPUT_SCHEMA, False), (V2_OUTPUTS, OUTPUT_SCHEMA, True)):
        if key in found:
            try:
                sides[key] = (declared_tensors(found[key]), True)
                continue
            except DeclarationError as exc:
                if log is not None:
                    log.warn('{path}: {key} {error}; the metadata comes from {schema} instead', path=path, key=key,
                             error=exc, schema=schema_key)
        sides[key] = (derived_tensors(found.get(schema_key), objects), False)
    (inputs, declared_in), (outputs, declared_out) = sides[V2_INPUTS], sides[V2_OUTPUTS]
    return ModelSpec(inputs, outputs, declared_in, declared_out)


def declared_tensors(value):
    """``V2_INPUTS``/``V2_OUTPUTS`` as ``TensorSpec``s; ``DeclarationError`` says what is wrong."""
    if not isinstance(value, (list, tuple)):
        raise DeclarationError('must be a list of {"name", "datatype", "shape"}, as a literal')
    specs = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get('name'), str) or not item['name']:
            raise DeclarationError('item {} must be a dict with a "name" (a string)'.format(index))
        if item.get('datatype') not in DATATYPES:
            raise DeclarationError('{!r}: datatype {!r} is not one of {}'.format(
                item['name'], item.get('datatype'), ', '.join(DATATYPES)))
        shape = item.get('shape')
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1
                                                           for d in shape):
            raise DeclarationError('{!r}: shape must be a list of integers (-1: any size), got {!r}'.format(
                item['name'], shape))
        specs.append(TensorSpec(item['name'], item['datatype'], shape, scalar=not shape))
    return specs


_SCALAR_TYPES = (('number', 'FP64'), ('integer', 'INT64'), ('boolean', 'BOOL'), ('string', 'BYTES'))


def derived_tensors(schema, objects_as_bytes=False):
    """One ``TensorSpec`` per property of an object schema that describes numbers, strings,
    booleans or arrays of them (an object, too, as BYTES when ``objects_as_bytes``: an
    output's JSON text)."""
    if not isinstance(schema, dict) or not isinstance(schema.get('properties'), dict):
        return []
    specs = []
    for name, sub in schema['properties'].items():
        if name in TRANSPORT_KEYS:
            continue
        found = _spec_of(sub, objects_as_bytes)
        if found is not None:
            datatype, shape = found
            specs.append(TensorSpec(name, datatype, shape or (1,), scalar=not shape))
    return specs


def _spec_of(schema, objects_as_bytes, depth=0):
    """``(datatype, shape)`` of a JSON Schema (shape ``()`` for one value), or None."""
    if not isinstance(schema, dict) or depth > 16:
        return None
    for key in ('anyOf', 'oneOf'):
        branches = schema.get(key)
        if isinstance(branches, list):
            found = [s for s in (_spec_of(b, objects_as_bytes, depth + 1) for b in branches) if s is not None]
            if found:  # the branch of the highest rank: the others are its special cases
                return max(found, key=lambda s: len(s[1]))
    types = schema.get('type')
    types = [types] if isinstance(types, str) else [t for t in types or () if t != 'null']
    if types[:1] == ['array']:
        item = _spec_of(schema.get('items'), objects_as_bytes, depth + 1)
        if item is None:
            return None
        low, high = schema.get('minItems'), schema.get('maxItems')
        size = low if isinstance(low, int) and low == high else -1
        return item[0], (size,) + tuple(item[1])
    for json_type, datatype in _SCALAR_TYPES:
        if json_type in types:
            return datatype, ()
    if objects_as_bytes and 'object' in types:
        return 'BYTES', ()
    return None


# -- an infer request ------------------------------------------------------------------------
def infer_payload(name, body, spec):
    """The ``/run`` body (bytes) that carries V2 infer request ``body`` to model ``name``;
    ``BadRequest`` for anything the protocol or the model's declared metadata refuses."""
    inputs = body.get('inputs')
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('"inputs" must be a non-empty list of tensors {"name", "shape", "datatype", "data"}')
    try:
        tensors = [read_input(tensor) for tensor in inputs]
    except TensorError as exc:
        raise BadRequest(str(exc)) from None
    names = [t.name for t in tensors]
    for reserved in (SIGNATURE, V2_MARKER):
        if reserved in names:
            raise BadRequest('an input may not be named {!r}'.format(reserved))
    if len(set(names)) != len(names):
        raise BadRequest('an input is sent twice: {}'.format(', '.join(sorted({n for n in names if names.count(n) > 1}))))
    if spec.declared_inputs:
        _check_declared(name, tensors, spec)
    payload, types = {SIGNATURE: name}, []
    for tensor in tensors:
        declared = spec.input(tensor.name)
        one_value = not tensor.shape or (declared is not None and declared.scalar and len(tensor.data) == 1)
        payload[tensor.name] = tensor.data[0] if one_value else nest(tensor.data, tensor.shape)
        types.append((tensor.name, tensor.datatype.name, [] if one_value else tensor.shape))
    request_id = body.get('id')
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    if body.get('parameters') is not None and not isinstance(body['parameters'], dict):
        raise BadRequest('"parameters" must be an object')
    outputs = _requested_outputs(name, body.get('outputs'), spec)
    payload[V2_MARKER] = dict(marker(types, outputs, request_id, {
        s.name: s.datatype for s in spec.outputs} if spec.declared_outputs else {}), model=name)
    return forward_payload(payload)


def _check_declared(model, tensors, spec):
    known = {s.name for s in spec.inputs}
    for tensor in tensors:
        declared = spec.input(tensor.name)
        if declared is None:
            raise BadRequest('model {!r} has no input {!r}; its inputs: {}'.format(
                model, tensor.name, ', '.join(sorted(known)) or 'none'))
        if tensor.datatype.name != declared.datatype:
            raise BadRequest('input {!r}: datatype {}, model {!r} takes {}'.format(
                tensor.name, tensor.datatype.name, model, declared.datatype))
        if not (shape_fits(tensor.shape, declared.shape) or declared.scalar and len(tensor.data) == 1):
            raise BadRequest('input {!r}: shape {}, model {!r} takes {} (-1: any size)'.format(
                tensor.name, tensor.shape, model, list(declared.shape)))
    missing = known - {t.name for t in tensors}
    if missing:
        raise BadRequest('model {!r} needs input {} too'.format(model, ', '.join(repr(m) for m in sorted(missing))))


def _requested_outputs(model, outputs, spec):
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get('name'), str)
                                                for o in outputs):
        raise BadRequest('"outputs" must be a list of {"name": ...}')
    names = [o['name'] for o in outputs]
    if spec.declared_outputs:
        known = [s.name for s in spec.outputs]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadRequest('model {!r} has no output {}; its outputs: {}'.format(
                model, ', '.join(repr(u) for u in unknown), ', '.join(known) or 'none'))
    return names
