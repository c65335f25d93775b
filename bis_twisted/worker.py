"""``FlaskWorker`` (alias ``Worker``): the base class of a user's endpoint.

A subclass writes ``_load_model``, ``_pre_process``, ``_predict`` and ``_post_process``; the
model server builds ``NR_WORKERS`` instances and calls ``execute`` on one at a time per
instance, from a pool thread. The names are the original project's, so endpoint files move
over by changing their import line.
"""

import base64
import binascii
import sys

import attr

from .logger import Logger, describe_failure, error_info
from .notifications import Notifications

STAGE_STATUS = {'_pre_process': 400, '_predict': 500, '_post_process': 500}


@attr.s(frozen=True)
class Outcome:
    """What one call of a worker produced: the HTTP status and the JSON body to answer."""

    status = attr.ib()
    body = attr.ib()


class _HookFailed(Exception):
    def __init__(self, stage, info):
        super().__init__(stage)
        self.stage = stage
        self.info = info


class FlaskWorker:
    """Base class for an endpoint's business logic.

    Every key of the merged config (the module's ``_CONFIG`` overridden by the endpoint's
    config entry) reads as ``self.cfg_<key lower case>``; a ``cfg_*`` the subclass defines
    itself wins. ``self.config_data`` and ``self.config_worker`` are the merged dict.
    """

    def __init__(self, log=None, default_config=None, verbosity_level=1, worker_id=0,
                 upstream_config=None, prefix_log='', server_name='', notifications=None,
                 **_kwargs):
        merged = dict(default_config or {})
        merged.update(upstream_config or {})
        self.config_worker = merged
        self.config_data = merged
        self._default_config = default_config or {}
        self._upstream_config_params = upstream_config or {}
        self._verbosity_level = verbosity_level
        self.worker_id = worker_id
        self.server_name = server_name
        base_log = log if log is not None else Logger(lib_name=type(self).__name__)
        self.log = base_log.with_prefix(prefix_log, config_data=merged)
        self._notifications = notifications if notifications is not None else Notifications()
        self._counter = None
        self._request_id = None

    def __getattr__(self, name):
        # Only called when normal lookup failed, so a subclass's own cfg_* property wins.
        if name.startswith('cfg_'):
            config = self.__dict__.get('config_worker') or {}
            wanted = name[4:].lower()
            for key, value in config.items():
                if key.lower() == wanted:
                    return value
            raise AttributeError(
                '{} has no config key {!r} (known: {})'.format(
                    type(self).__name__, wanted.upper(), ', '.join(sorted(config)) or 'none'))
        raise AttributeError('{!r} object has no attribute {!r}'.format(type(self).__name__, name))

    # -- the four hooks a subclass writes -------------------------------------------------
    def _load_model(self):
        """Load the model; called once per worker instance, at start, off the reactor."""

    def _pre_process(self, inputs):
        """Turn the request JSON (without ``SIGNATURE``) into what ``_predict`` takes."""
        raise NotImplementedError('{} must implement _pre_process'.format(type(self).__name__))

    def _predict(self, prep_inputs):
        raise NotImplementedError('{} must implement _predict'.format(type(self).__name__))

    def _post_process(self, pred):
        """Return what goes back to the client as ``predict_result``."""
        raise NotImplementedError('{} must implement _post_process'.format(type(self).__name__))

    # -- what user code may call -----------------------------------------------------------
    def _create_notification(self, notif=None, msg=None, notification_type=None,
                             notification=None, **_kwargs):
        """Record a notification under the current call id (``GENERAL`` outside a call).

        Accepts the README's ``(notif='log', msg=...)`` and the older
        ``(notification_type=..., notification=...)`` spellings.
        """
        kind = notif if notif is not None else (notification_type or 'log')
        text = msg if msg is not None else notification
        self._notifications.add(self._counter, str(kind).upper(), type(self).__name__, text,
                                request_id=self._request_id)

    # -- what the server calls ------------------------------------------------------------
    def startup(self):
        self._load_model()

    def execute(self, inputs, call_id, request_id=None):
        """Run the hooks on ``inputs``; never raises: a failing hook becomes an error Outcome
        (400 from ``_pre_process`` or input decoding, 500 later) and the worker stays usable."""
        self._counter = call_id
        self._request_id = request_id
        try:
            try:
                inputs = _decode_base64_inputs(inputs)
            except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
                raise _HookFailed('_pre_process', error_info(type(exc), exc, sys.exc_info()[2]))
            prep = self._run_hook('_pre_process', self._pre_process, inputs)
            pred = self._run_hook('_predict', self._predict, prep)
            answer = self._run_hook('_post_process', self._post_process, pred)
            try:
                answer = _encode_base64_outputs(answer, inputs)
            except (ValueError, TypeError, UnicodeEncodeError) as exc:
                raise _HookFailed('_post_process', error_info(type(exc), exc, sys.exc_info()[2]))
            return Outcome(200, {'predict_result': answer})
        except _HookFailed as failed:
            return self._error_outcome(failed.stage, failed.info)
        finally:
            self._counter = None
            self._request_id = None

    def _run_hook(self, stage, hook, arg):
        try:
            return hook(arg)
        # a user's hook may raise anything, sys.exit() too; it is reported, not lost, and
        # a SystemExit in a pool thread would otherwise end that thread with no answer
        except (Exception, SystemExit) as exc:
            raise _HookFailed(stage, error_info(type(exc), exc, exc.__traceback__))

    def _error_outcome(self, stage, info):
        err_type, err_file, err_func, err_line, err_msg = info
        details = {'ERR_TYPE': err_type, 'ERR_MSG': err_msg, 'ERR_FILE': err_file,
                   'ERR_FUNC': err_func, 'ERR_LINE': err_line}
        self._create_notification(notif='exception', msg='Exception in {}: {}'.format(stage, details))
        self.log.P('request {}: {} failed: {}: {}'.format(self._request_id or '-', stage, err_type, err_msg),
                   color='r')
        body = {
            '{}_ERROR'.format(type(self).__name__): details,
            'ERROR': describe_failure(stage, info),
        }
        return Outcome(STAGE_STATUS[stage], body)


Worker = FlaskWorker


def _decode_base64_inputs(inputs):
    keys = inputs.get('BASE64_KEYS')
    if not keys:
        return inputs
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list):
        raise TypeError('BASE64_KEYS must be a list of input names')
    encoding = inputs.get('ENCODING')
    decoded = dict(inputs)
    for key in keys:
        if key not in decoded:
            raise ValueError('BASE64_KEYS names {!r}, which is not in the inputs'.format(key))
        raw = base64.b64decode(decoded[key], validate=True)
        decoded[key] = raw.decode(encoding) if encoding else raw
    return decoded


def _encode_base64_outputs(answer, inputs):
    keys = inputs.get('BASE64_OUTPUTS')
    if not keys or not isinstance(answer, dict):
        return answer
    if isinstance(keys, str):
        keys = [keys]
    encoding = inputs.get('ENCODING') or 'utf-8'
    encoded = dict(answer)
    for key in keys:
        if key in encoded:
            value = encoded[key]
            if isinstance(value, str):
                value = value.encode(encoding)
            elif not isinstance(value, (bytes, bytearray)):
                raise TypeError('BASE64_OUTPUTS names {!r}, whose value is {}, not text or bytes'.format(
                    key, type(value).__name__))
            encoded[key] = base64.b64encode(value).decode('ascii')
    return encoded
