"""``bis-gateway --reload``: a changed helper module reloads only the servers whose files
import it (directly or through another file); a new file nobody imports reloads nothing."""

import os
import types

import pytest_twisted
from twisted.internet.task import Clock

from bis_twisted.gateway.watch import ReloadWatcher, imported_files
from fakes import FakeFleet


def project(tmp_path, files):
    folder = tmp_path / 'endpoints'
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config = tmp_path / 'config.json'
    config.write_text('{}')
    return folder, config


FILES = {
    'a.py': 'import helpers\nfrom bis_twisted import FlaskWorker\n',
    'b.py': 'import os\n',
    'c.py': 'from pkg.sub import thing\n',
    'd.py': 'from . import shared_util\n',
    'helpers.py': 'from deeper import VALUE\n',
    'deeper.py': 'VALUE = 1\n',
    'shared_util.py': 'X = 1\n',
    'pkg/__init__.py': '',
    'pkg/sub.py': 'thing = 1\n',
}


def touch(path, text='# changed\n'):
    with open(path, 'a') as fh:
        fh.write(text)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_imported_files_follow_imports_through_the_folder(tmp_path):
    folder, _ = project(tmp_path, FILES)
    found = imported_files(str(folder / 'a.py'), str(folder))
    assert {str(folder / 'helpers.py'), str(folder / 'deeper.py')} <= found
    assert str(folder / 'pkg' / 'sub.py') in imported_files(str(folder / 'c.py'), str(folder))
    assert str(folder / 'shared_util.py') in imported_files(str(folder / 'd.py'), str(folder))
    assert not any(p.startswith(str(folder)) and os.path.exists(p) for p in imported_files(str(folder / 'b.py'),
                                                                                            str(folder)))


@pytest_twisted.ensureDeferred
async def test_only_the_servers_importing_a_changed_helper_are_reloaded_and_a_new_file_reloads_none(tmp_path):
    folder, config = project(tmp_path, FILES)
    fleet = FakeFleet(['a', 'b', 'c', 'd'])
    service = types.SimpleNamespace(options=types.SimpleNamespace(config=str(config)), endpoints_dir=str(folder),
                                    fleet=fleet, reload_config=None)
    watcher = ReloadWatcher(service, reactor=Clock())

    touch(folder / 'deeper.py')
    await watcher.check()
    assert fleet.reloaded == ['a']

    (folder / 'brand_new.py').write_text('print(1)\n')
    await watcher.check()
    assert fleet.reloaded == ['a']

    touch(folder / 'pkg' / 'sub.py')
    touch(folder / 'b.py')
    await watcher.check()
    assert sorted(fleet.reloaded) == ['a', 'b', 'c']

    touch(folder / 'shared_util.py')
    await watcher.check()
    assert fleet.reloaded[-1] == 'd'
