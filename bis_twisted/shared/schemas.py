"""An endpoint's ``INPUT_SCHEMA`` and ``OUTPUT_SCHEMA``: JSON Schemas its file may declare.

Two readers, one per process:

- the model server (``SchemaCheck``) validates each request's inputs before ``_pre_process``
  (400 naming the field and the rule) and each ``predict_result`` against ``OUTPUT_SCHEMA``
  (500). Each schema is compiled once to Python code by ``fastjsonschema`` (a couple of
  microseconds per small request, against ~50 for ``jsonschema``'s ``iter_errors``); only a
  value it refuses goes through ``jsonschema``, which has the last word and names the field
  and the rule. A schema ``fastjsonschema`` could read differently (a draft it does not know,
  a keyword from 2019-09 on, ``$ref`` beside other keywords, a fractional ``multipleOf``) is checked by ``jsonschema``
  alone. A small value is checked on the reactor thread (cheaper than a thread hop); a large
  one in the reactor's thread pool, so a big body never holds the reactor up;
- the gateway (``declared_schemas``) reads them for ``/openapi.json`` from the file's syntax
  tree with ``ast.literal_eval``, so user code is never imported there. A schema that is not
  a literal (built by a function, say) still validates in the server; the gateway's document
  then shows that endpoint's body without it.
"""

import ast
import json

import attr
from twisted.internet import defer, threads

from ..errors import EndpointLoadError
from .tensors import V2_MARKER
from .web import dumps, loads_encoded

INPUT_SCHEMA = 'INPUT_SCHEMA'
OUTPUT_SCHEMA = 'OUTPUT_SCHEMA'
SCHEMA_NAMES = (INPUT_SCHEMA, OUTPUT_SCHEMA)
# the keys the server itself reads from the inputs; a schema need not list them
TRANSPORT_KEYS = ('SIGNATURE', 'BASE64_KEYS', 'BASE64_OUTPUTS', 'ENCODING', V2_MARKER)


@attr.s(frozen=True)
class EndpointSchemas:
    """What an endpoint file declares; ``None`` where it declares nothing."""

    input = attr.ib(default=None)
    output = attr.ib(default=None)

    @property
    def examples(self):
        """The input examples (``INPUT_SCHEMA["examples"]``, a list of objects)."""
        examples = (self.input or {}).get('examples') or []
        return [e for e in examples if isinstance(e, dict)] if isinstance(examples, list) else []


# -- the gateway's reading: syntax only ---------------------------------------------------------
def declared_schemas(path):
    """``EndpointSchemas`` of the file at ``path`` from its module-level assignments, read as
    literals; a missing file, a syntax error or a non-literal value reads as "none"."""
    found = declared_literals(path, SCHEMA_NAMES)
    found = {name: value if isinstance(value, dict) else None for name, value in found.items()}
    return EndpointSchemas(input=found.get(INPUT_SCHEMA), output=found.get(OUTPUT_SCHEMA))


def declared_literals(path, names):
    """``{name: value}`` of the module-level assignments to ``names`` in the file at ``path``,
    each read as a literal (None when it is not one); a missing file or a syntax error reads
    as ``{}``. The file is parsed, never imported."""
    try:
        with open(path, encoding='utf-8') as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return {}
    found = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else [])
        for target in targets:
            if isinstance(target, ast.Name) and target.id in names:
                try:
                    found[target.id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    found[target.id] = None
    return found


# -- the model server's reading: the imported module ------------------------------------------
def _validator_class(schema, path, name):
    try:
        import jsonschema
        from jsonschema.exceptions import SchemaError
    except ImportError:  # a core dependency; a bare install without it must say so, not skip
        raise EndpointLoadError('{}: {} needs the jsonschema package, which is not installed: '
                                'pip install jsonschema'.format(path, name)) from None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = '/'.join(str(p) for p in exc.path) or 'top level'
        raise EndpointLoadError('{}: {} is not a valid JSON Schema (at {}): {}'.format(
            path, name, where, exc.message)) from None
    return cls


def module_schemas(module, path):
    """``EndpointSchemas`` of an imported endpoint module, each checked to be a valid JSON
    Schema; ``EndpointLoadError`` (one line, naming the file and the key) otherwise."""
    values = {}
    for name in SCHEMA_NAMES:
        value = getattr(module, name, None)
        if value is not None:
            if not isinstance(value, dict):
                raise EndpointLoadError('{}: {} must be a dict (a JSON Schema), not {}'.format(
                    path, name, type(value).__name__))
            _validator_class(value, path, name)
        values[name] = value
    return EndpointSchemas(input=values[INPUT_SCHEMA], output=values[OUTPUT_SCHEMA])


class SchemaViolation(Exception):
    """One input or output that breaks its schema: ``field`` (``FEATURES[1]``, ``inputs`` for
    the object itself), ``rule`` (``minItems: 4``) and ``message``, one line."""

    def __init__(self, message, field, rule):
        super().__init__(message)
        self.message = message
        self.field = field
        self.rule = rule

    def details(self):
        return {'FIELD': self.field, 'RULE': self.rule, 'MESSAGE': self.message}


# keywords whose meaning fastjsonschema (drafts 4, 6 and 7) does not share with jsonschema's
# default draft (2020-12): a schema using one is checked by jsonschema alone
_LATER_KEYWORDS = frozenset(('prefixItems', 'unevaluatedProperties', 'unevaluatedItems', 'dependentRequired',
                             'dependentSchemas', 'minContains', 'maxContains', '$anchor', '$dynamicRef',
                             '$dynamicAnchor', '$recursiveRef', '$recursiveAnchor', '$vocabulary'))
_FAST_DRAFTS = ('http://json-schema.org/draft-04/schema', 'http://json-schema.org/draft-06/schema',
                'http://json-schema.org/draft-07/schema')
# bytes of a request body (or of an encoded answer) checked on the reactor thread, at most
INLINE_CHECK_BYTES = 64 * 1024


def _fast_readable(schema):
    """Whether ``fastjsonschema`` reads ``schema`` as ``jsonschema`` does (see the module's docstring)."""
    declared = schema.get('$schema') if isinstance(schema, dict) else None
    if declared is not None and not (isinstance(declared, str) and declared.rstrip('#').startswith(_FAST_DRAFTS)):
        return False
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if _LATER_KEYWORDS.intersection(item) or ('$ref' in item and len(item) > 1):
                return False
            if isinstance(item.get('multipleOf'), float):  # float arithmetic: the two round differently
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _fast_validator(schema):
    """``schema`` compiled by ``fastjsonschema`` (formats not checked, no defaults filled in,
    as ``jsonschema`` does by default), or None where it could read it differently."""
    if not _fast_readable(schema):
        return None
    try:
        import fastjsonschema
        return fastjsonschema.compile(schema, use_formats=False, use_default=False)
    except Exception:  # noqa: BLE001 -- a schema it cannot compile is jsonschema's alone
        return None


@attr.s(frozen=True)
class _Compiled:
    full = attr.ib()  # jsonschema's validator: the last word, and the error's description
    fast = attr.ib()  # fastjsonschema's function, or None


class SchemaCheck:
    """The compiled schemas of one endpoint; ``check_input``/``check_output`` raise
    ``SchemaViolation`` for the most relevant error; ``input_check``/``output_check`` check a
    small value at once and give a large one's check off the reactor thread as a Deferred
    (``input_checked``: always a Deferred)."""

    def __init__(self, schemas, path='endpoint', reactor=None, inline_bytes=INLINE_CHECK_BYTES):
        self.schemas = schemas
        self._reactor = reactor
        self.inline_bytes = inline_bytes
        self._input = self._compile(schemas.input, path, INPUT_SCHEMA)
        self._output = self._compile(schemas.output, path, OUTPUT_SCHEMA)

    @staticmethod
    def _compile(schema, path, name):
        if schema is None:
            return None
        return _Compiled(_validator_class(schema, path, name)(schema), _fast_validator(schema))

    @property
    def has_input(self):
        return self._input is not None

    @property
    def has_output(self):
        return self._output is not None

    def inline(self, size):
        """Whether a value of ``size`` bytes is checked on the reactor thread (None: unknown, no)."""
        return size is not None and size <= self.inline_bytes

    def _now_or_off_reactor(self, size, function, *args):
        """``function(*args)`` now when ``size`` is small (None, or what it raises), else its
        Deferred in the reactor's thread pool."""
        if self.inline(size):
            function(*args)
            return None
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    def input_checked(self, inputs, size):
        """``input_check`` always in a Deferred: on this thread when the body was ``size``
        bytes at most ``inline_bytes``, else in the reactor's thread pool (``size`` None:
        unknown)."""
        return defer.maybeDeferred(self.input_check, inputs, size)

    def input_check(self, inputs, size):
        """``check_input`` now when the body was ``size`` bytes at most ``inline_bytes`` (None,
        or ``SchemaViolation`` raised), else its Deferred in the reactor's thread pool: the
        check of a small request needs no Deferred at all."""
        return self._now_or_off_reactor(size, self.check_input, inputs)

    def output_check(self, result):
        """``check_output`` now when ``result`` is small (None, or ``SchemaViolation``
        raised), else its Deferred off the reactor thread."""
        if self._output is None:
            return None
        try:
            sent = dumps(result)
        except (TypeError, ValueError):  # not JSON at all: the answer's own error says so
            return None
        return self._now_or_off_reactor(len(sent), self._check_sent, sent)

    @property
    def active(self):
        return self._input is not None or self._output is not None

    def check_input(self, inputs):
        """``inputs`` as the client sent them, less the keys the server itself reads
        (``TRANSPORT_KEYS``), so a schema with ``additionalProperties: false`` need not list them."""
        if self._input is not None:
            self._check(self._input, {k: v for k, v in inputs.items() if k not in TRANSPORT_KEYS}, 'inputs')

    def check_output(self, result):
        """``result`` as it will be sent: numpy arrays as lists, bytes as base64 text."""
        if self._output is not None:
            try:
                sent = dumps(result)
            except (TypeError, ValueError):  # not JSON at all: the answer's own error says so
                return
            self._check_sent(sent)

    def _check_sent(self, sent):
        self._check(self._output, loads_encoded(sent), 'predict_result')

    @staticmethod
    def _check(compiled, value, root):
        if compiled.fast is not None:
            try:
                compiled.fast(value)
                return
            except Exception:  # noqa: BLE001 -- refused (or tripped over): jsonschema decides and explains
                pass
        from jsonschema.exceptions import relevance

        errors = list(compiled.full.iter_errors(value))
        if errors:
            # the most relevant error at its own level: an anyOf/oneOf is reported as itself
            # (with its description), since guessing which branch was meant misleads more
            # often than it helps (best_match's descent into the branches)
            raise describe(max(errors, key=relevance), root)


def _field(path, root):
    text = ''
    for part in path:
        text += '[{}]'.format(part) if isinstance(part, int) else ('.' if text else '') + str(part)
    return text or root


def _rule(error):
    value = error.validator_value
    if isinstance(value, bool):  # spelled as in the schema's JSON
        return '{}: {}'.format(error.validator, json.dumps(value))
    if isinstance(value, (int, float, str)) and error.validator not in ('$ref', 'pattern'):
        return '{}: {}'.format(error.validator, value)
    if error.validator == 'pattern':
        return 'pattern: {}'.format(value)
    if error.validator == 'type' and isinstance(value, list):
        return 'type: {}'.format(' or '.join(value))
    return str(error.validator)


def _description(error):
    # the nearest schema on the way up that says what is expected
    while error is not None:
        schema = error.schema if isinstance(error.schema, dict) else {}
        if isinstance(schema.get('description'), str):
            return schema['description']
        error = error.parent
    return None


def describe(error, root='inputs'):
    """A ``jsonschema`` ValidationError as a ``SchemaViolation``:
    ``FEATURES: expected an array of 4 numbers; [1, 2] is too short (rule minItems: 4)``."""
    field = _field(error.absolute_path, root)
    expected = _description(error)
    if error.validator == 'required':
        # the field is the missing property, and what is expected is its own description
        missing = next((name for name in error.validator_value
                        if isinstance(error.instance, dict) and name not in error.instance), None)
        if missing is not None:
            field = _field(list(error.absolute_path) + [missing], root)
            properties = error.schema.get('properties', {}) if isinstance(error.schema, dict) else {}
            described = properties.get(missing, {}).get('description') if isinstance(
                properties.get(missing), dict) else None
            expected = described if isinstance(described, str) else None
    rule = _rule(error)
    message = error.message if len(error.message) <= 200 else error.message[:200] + '...'
    text = '{}: {}{} (rule {})'.format(field, 'expected {}; '.format(expected) if expected else '', message, rule)
    return SchemaViolation(text, field, rule)
