"""``bis-gateway new NAME``: write a commented endpoint skeleton to ``<endpoints>/NAME.py``
and add its entry to the config, refusing to overwrite either."""

import json
import os
import re
import sys

from ..protocol import endpoint_file, expected_class_name

NAME_RULE = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')

SKELETON = '''"""{name}: what this endpoint does (one line, for whoever reads this next).

Written by `bis-gateway new {name}`. Try it once the gateway runs::

    curl -d '{{"SIGNATURE": "{name}", "TEXT": "hello"}}' localhost:5002/run
"""

from bis_twisted import FlaskWorker

# Defaults of this endpoint's settings. Its entry in the config overrides them, and each one
# reads as self.cfg_<key in lower case> (GREETING -> self.cfg_greeting).
_CONFIG = {{
    'GREETING': 'you said',
}}

# What a request must hold, as a JSON Schema. The model server refuses anything else with 400
# (naming the field and the rule) before _pre_process runs; /openapi.json and /docs show it.
# Keep it a literal (no function calls, no variables): the gateway reads it without importing
# this file. Delete it to accept any input.
INPUT_SCHEMA = {{
    'type': 'object',
    'properties': {{
        'TEXT': {{'type': 'string', 'minLength': 1, 'description': 'the text to answer'}},
    }},
    'required': ['TEXT'],
    'examples': [{{'TEXT': 'hello'}}],
}}

# What predict_result holds; an answer that breaks it is a 500 (a bug here). Optional.
OUTPUT_SCHEMA = {{
    'type': 'object',
    'properties': {{'answer': {{'type': 'string'}}}},
    'required': ['answer'],
}}


class {cls}(FlaskWorker):

    def _load_model(self):
        # Once per worker instance (NR_WORKERS of them), at start, in a thread: load weights
        # here. If it raises, the server stops with one line naming this file.
        self.model = str.upper  # stands for a real model
        self.log.P('model loaded')

    def _pre_process(self, inputs):
        # inputs: the request's JSON without SIGNATURE. Raise (ValueError, ...) for an input
        # you cannot use: the client gets 400 with your message.
        return inputs['TEXT']

    def _predict(self, text):
        # The model's work. It runs in a worker thread: blocking is fine. An exception: 500.
        return self.model(text)

    def _post_process(self, prediction):
        # What goes back as predict_result: JSON-able (dict, list, str, number; numpy
        # arrays and bytes are converted).
        return {{'answer': '{{}} {{}}'.format(self.cfg_greeting, prediction)}}
'''


class ScaffoldError(Exception):
    """Why nothing was written; one line."""


def new_endpoint(name, config_path, endpoints_dir):
    """Write ``<endpoints_dir>/<name>.py`` and add ``name`` to ``config_path`` (created when
    it does not exist). Checks everything before writing anything."""
    if not NAME_RULE.match(name):
        raise ScaffoldError('{!r} cannot name an endpoint file: use letters, digits and underscores, '
                            'starting with a letter (e.g. my_model)'.format(name))
    path = endpoint_file(endpoints_dir, name)
    if os.path.exists(path):
        raise ScaffoldError('{} already exists; nothing written (pick another name, or edit it)'.format(path))
    if os.path.exists(config_path):
        try:
            with open(config_path, encoding='utf-8') as fh:
                config = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ScaffoldError('{}: cannot add the endpoint, the file does not read as JSON ({}); '
                                'nothing written'.format(config_path, exc)) from None
        if not isinstance(config, dict) or not isinstance(config.setdefault('CONFIG_ENDPOINTS', {}), dict):
            raise ScaffoldError("{}: key 'CONFIG_ENDPOINTS' is not an object of endpoint entries; "
                                "nothing written".format(config_path))
    else:
        config = {'CONFIG_ENDPOINTS': {}}
    if name in config['CONFIG_ENDPOINTS']:
        raise ScaffoldError("{}: endpoint {!r} is already configured; nothing written".format(config_path, name))

    cls = expected_class_name(name)
    os.makedirs(endpoints_dir, exist_ok=True)
    with open(path, 'x', encoding='utf-8') as fh:  # 'x': never overwrite, even in a race
        fh.write(SKELETON.format(name=name, cls=cls))
    entry = {'NR_WORKERS': 1, 'DESCRIPTION': '{}: written by bis-gateway new; edit {}'.format(name, path)}
    text = None
    if os.path.exists(config_path):
        with open(config_path, encoding='utf-8', newline='') as fh:
            text = insert_entry(fh.read(), name, entry)
    if text is None:  # a new file, or one without a CONFIG_ENDPOINTS object to add to: written whole
        config['CONFIG_ENDPOINTS'][name] = entry
        text = json.dumps(config, indent=4, ensure_ascii=False) + '\n'
    partial = config_path + '.new'
    with open(partial, 'w', encoding='utf-8', newline='') as fh:
        fh.write(text)
    os.replace(partial, config_path)  # atomic: a crash leaves the old file or the new one
    return path, cls


def insert_entry(text, name, entry):
    """``text`` (a config file's JSON) with ``"name": entry`` added as the last entry of its
    ``CONFIG_ENDPOINTS`` object, indented as the entries before it; every other byte as it
    was. None when the text has no such object (or the result would not read back as the
    same config plus the entry)."""
    span = _value_span(text, 'CONFIG_ENDPOINTS')
    if span is None:
        return None
    start, end = span  # the object's '{' and '}'
    inner = text[start + 1:end]
    newline = '\r\n' if '\r\n' in text else '\n'
    line = text[text.rfind('\n', 0, end) + 1:end]
    closing_indent = line[:len(line) - len(line.lstrip(' \t'))]  # of the line the object ends on
    found = re.match(r'\s*?\n([ \t]*)"', inner)
    indent = found.group(1) if found else closing_indent + '    '
    body = json.dumps(entry, indent=4, ensure_ascii=False).replace('\n', newline + indent)
    piece = '{}: {}'.format(json.dumps(name, ensure_ascii=False), body)
    if inner.strip():
        at = start + 1 + len(inner.rstrip())
        result = text[:at] + ',' + newline + indent + piece + text[at:]
    else:
        result = text[:start + 1] + newline + indent + piece + newline + closing_indent + text[end:]
    try:
        before, after = json.loads(text), json.loads(result)
    except ValueError:
        return None
    before['CONFIG_ENDPOINTS'][name] = entry
    return result if after == before else None


def _value_span(text, key):
    """``(index of '{', index of its '}')`` of the object that top-level ``key`` holds, or None."""
    depth, i, pending = 0, 0, None
    while i < len(text):
        char = text[i]
        if char == '"':
            end = i + 1
            while text[end] != '"':
                end += 2 if text[end] == '\\' else 1
            if depth == 1 and pending is None:
                pending = json.loads(text[i:end + 1])
            i = end + 1
            continue
        if char in '{[':
            if depth == 1 and pending == key and char == '{':
                return i, _matching(text, i)
            depth += 1
        elif char in '}]':
            depth -= 1
        elif char == ',':
            pending = None
        i += 1
    return None


def _matching(text, start):
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == '"':
            i += 1
            while text[i] != '"':
                i += 2 if text[i] == '\\' else 1
        elif char in '{[':
            depth += 1
        elif char in '}]':
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError('unbalanced JSON')


def run_new(name, options, out=None):
    out = out or sys.stdout
    try:
        path, cls = new_endpoint(name, options.config, options.endpoints)
    except ScaffoldError as exc:
        sys.stderr.write('bis-gateway new: {}\n'.format(exc))
        return 1
    out.write('wrote {} (class {}) and added {!r} to {}\n'.format(path, cls, name, options.config))
    out.write('next: edit it, run `bis-gateway check`, start the gateway, then\n'
              '      curl -d \'{{"SIGNATURE": "{}", "TEXT": "hello"}}\' localhost:{}/run\n'.format(name, options.port))
    return 0
