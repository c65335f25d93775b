"""``bis-gateway new`` adds its entry to the config and leaves every other byte as it was
(alignment, blank lines, comments-in-strings, CRLF)."""

import difflib
import json

from bis_twisted.gateway.scaffold import insert_entry
from procs import REPO_ROOT
from test_cli_tools import bis_gateway, project

ENTRY = {'NR_WORKERS': 1, 'DESCRIPTION': 'x'}


def only_insertions(before, after):
    """The lines ``after`` adds to ``before``; fails if it changes or removes any."""
    added = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        assert op in ('equal', 'insert'), (op, before[a1:a2], after[b1:b2])
        if op == 'insert':
            added.append(after[b1:b2])
    return added


def test_the_example_config_gets_the_entry_inserted_and_keeps_every_other_byte():
    with open(REPO_ROOT + '/config_gateway.txt', encoding='utf-8') as fh:
        text = fh.read()
    result = insert_entry(text, 'my_model', ENTRY)
    [added] = only_insertions(text, result)
    assert added == ',\n        "my_model": {\n            "NR_WORKERS": 1,\n            "DESCRIPTION": "x"\n        }'
    assert json.loads(result)['CONFIG_ENDPOINTS']['my_model'] == ENTRY
    assert list(json.loads(result)['CONFIG_ENDPOINTS'])[-1] == 'my_model'


def test_an_empty_object_crlf_and_braces_inside_strings():
    text = '{\r\n  "SERVER_NAME": "a {tricky} \\" name",\r\n  "CONFIG_ENDPOINTS": {}\r\n}\r\n'
    result = insert_entry(text, 'm', ENTRY)
    assert result == ('{\r\n  "SERVER_NAME": "a {tricky} \\" name",\r\n  "CONFIG_ENDPOINTS": {\r\n      "m": {\r\n'
                      '          "NR_WORKERS": 1,\r\n          "DESCRIPTION": "x"\r\n      }\r\n  }\r\n}\r\n')
    nested = '{"X": {"CONFIG_ENDPOINTS": 1}, "CONFIG_ENDPOINTS": {"a": {"k": "}"}}}'
    assert json.loads(insert_entry(nested, 'b', ENTRY))['CONFIG_ENDPOINTS'] == {'a': {'k': '}'}, 'b': ENTRY}
    assert insert_entry('{"CONFIG_ENDPOINTS": []}', 'b', ENTRY) is None


def test_new_on_the_users_config_changes_nothing_but_its_entry(tmp_path):
    folder = project(tmp_path, {'CONFIG_ENDPOINTS': {}})
    with open(REPO_ROOT + '/config_gateway.txt', encoding='utf-8') as fh:
        before = fh.read()
    (folder / 'config_gateway.txt').write_text(before, encoding='utf-8')
    done = bis_gateway(folder, 'new', 'sentiment_v3')
    assert done.returncode == 0, done
    after = (folder / 'config_gateway.txt').read_text(encoding='utf-8')
    [added] = only_insertions(before, after)
    assert added.count('\n') == 4  # a 4-line entry, not a rewrite of the file
