"""``FlaskWorker`` (alias ``Worker``): the base class of a user's endpoint.

A subclass writes ``_load_model``, ``_pre_process``, ``_predict`` and ``_post_process``; the
model server builds ``NR_WORKERS`` instances and calls ``execute`` (``execute_batch`` with
``MAX_BATCH_SIZE`` > 1) on one at a time per instance, from a pool thread. The names are the original project's, so endpoint files move
over by changing their import line.
"""

import base64
import binascii
import codecs
import inspect
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union, cast

from .logger import ErrorInfo, Logger, describe_failure, error_info
from .notifications import Notifications
from .protocol import DEVICE_VARIABLE
from .shared import tracing
from .shared.web import Answer, dumps

# the request's JSON object, as a worker's execute() gets it
Inputs = Dict[str, Any]
# one call of a batch: (inputs, call_id, request_id)
Call = Tuple[Inputs, int, Optional[str]]

STAGE_STATUS: Dict[str, int] = {'_pre_process': 400, '_batch': 500, '_predict': 500, '_unbatch': 500,
                                '_post_process': 500}


class _Refused(Exception):
    """A stage of the pipeline cannot go on for one call: ``answer`` is what that call gets."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class FlaskWorker:
    """Base class for an endpoint's business logic.

    Every key of the merged config (the module's ``_CONFIG`` overridden by the endpoint's
    config entry) reads as ``self.cfg_<key lower case>``; a ``cfg_*`` the subclass defines
    itself wins. ``self.config_data`` and ``self.config_worker`` are the merged dict.
    """

    def __init__(self, log: Optional[Logger] = None, default_config: Optional[Mapping[str, Any]] = None,
                 verbosity_level: int = 1, worker_id: int = 0, upstream_config: Optional[Mapping[str, Any]] = None,
                 prefix_log: str = '', server_name: str = '', notifications: Optional[Notifications] = None,
                 **_kwargs: Any) -> None:
        merged: Dict[str, Any] = dict(default_config or {})
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
        self.log.context = lambda: {'worker_id': self.worker_id, 'request_id': self._request_id}
        self._notifications = notifications if notifications is not None else Notifications()
        self._counter: Optional[int] = None
        self._request_id: Optional[str] = None
        # [(call_id, request_id)] while a batch is inside _predict
        self._batch_calls: Optional[List[Tuple[int, Optional[str]]]] = None
        # "cuda:0" when the gateway gave this replica a device (DEVICES: CUDA_VISIBLE_DEVICES
        # holds just that one, so it is device 0 in this process's view), else "cpu"
        self.device = os.environ.get(DEVICE_VARIABLE) or 'cpu'

    def __getattr__(self, name: str) -> Any:
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
    def _load_model(self) -> object:
        """Load the model; called once per worker instance, at start, off the reactor (what it
        returns is ignored)."""

    def _pre_process(self, inputs: Any) -> Any:
        """Turn the request JSON (without ``SIGNATURE``) into what ``_predict`` takes."""
        raise NotImplementedError('{} must implement _pre_process'.format(type(self).__name__))

    def _predict(self, prep_inputs: Any) -> Any:
        raise NotImplementedError('{} must implement _predict'.format(type(self).__name__))

    def _post_process(self, pred: Any) -> Any:
        """Return what goes back to the client as ``predict_result``."""
        raise NotImplementedError('{} must implement _post_process'.format(type(self).__name__))

    # -- with MAX_BATCH_SIZE > 1: _predict takes what _batch made of the list of pre-processed
    # inputs and returns what _unbatch turns into a list of the same length, in order --------
    def _batch(self, prep_inputs_list: List[Any]) -> Any:
        """Stack the pre-processed inputs of a batch for ``_predict`` (default: the list)."""
        return prep_inputs_list

    def _unbatch(self, preds: Any) -> Any:
        """Split ``_predict``'s result into one item per input (default: the result itself)."""
        return preds

    # -- what user code may call -----------------------------------------------------------
    def _create_notification(self, notif: Optional[str] = None, msg: Any = None,
                             notification_type: Optional[str] = None, notification: Any = None,
                             **_kwargs: Any) -> None:
        """Record a notification under the current call id (``GENERAL`` outside a call).

        Accepts the README's ``(notif='log', msg=...)`` and the older
        ``(notification_type=..., notification=...)`` spellings.
        """
        kind = notif if notif is not None else (notification_type or 'log')
        text = msg if msg is not None else notification
        for call_id, request_id in self._batch_calls or ((self._counter, self._request_id),):
            self._notifications.add(call_id, str(kind).upper(), type(self).__name__, text,
                                    request_id=request_id)

    # -- what the server calls: one pipeline, three drivers ----------------------------------
    # Every call goes decode -> _pre_process -> predict -> _post_process -> encode. The
    # drivers differ only in the predict step: one input (``execute``), a batch
    # (``execute_batch``) or a generator read chunk by chunk (``execute_stream``). A stage
    # that fails for one call raises ``_Refused`` with that call's Answer; the others go on.
    def startup(self) -> None:
        self._load_model()

    def execute(self, inputs: Inputs, call_id: int, request_id: Optional[str] = None) -> Answer:
        """Run the hooks on ``inputs``; never raises: a failing stage becomes an error Answer
        (400 from ``_pre_process`` or input decoding, 500 later) and the worker stays usable."""
        return self._drive([(inputs, call_id, request_id)], self._predict_one)[0]

    def execute_batch(self, calls: Sequence[Call]) -> List[Answer]:
        """Run a batch: ``calls`` is a list of ``(inputs, call_id, request_id)``; answers one
        Answer per call, in order, and never raises. Decoding, ``_pre_process`` and
        ``_post_process`` run per call (a failure answers that call alone); ``_batch``,
        ``_predict`` and ``_unbatch`` once for the calls that were pre-processed (a failure,
        or a result of the wrong length, answers 500 to each of them)."""
        return self._drive(calls, self._predict_batch)

    def execute_stream(self, inputs: Inputs, call_id: int,
                       request_id: Optional[str] = None) -> Union['ChunkStream', Answer]:
        """Decode, ``_pre_process`` and start ``_predict``: a ``ChunkStream`` to read the
        chunks from, or the error Answer (400 from decoding or ``_pre_process``) when it did
        not start."""
        self._counter, self._request_id = call_id, request_id
        try:
            decoded, prep = self._prepare(inputs)
            items = self._run_hook('_predict', self._predict, prep)
            items = self._run_hook('_predict', iter, items)
        except _Refused as refused:
            return refused.answer
        finally:
            self._counter = None
            self._request_id = None
        return ChunkStream(self, items, decoded, call_id, request_id)

    def _drive(self, calls: Sequence[Call],
               predict: Callable[[Sequence[Call], List[Any]], List[Any]]) -> List[Answer]:
        answers: List[Optional[Answer]] = [None] * len(calls)
        ready: List[Tuple[int, Inputs, Any]] = []  # (index, decoded inputs, pre-processed input)
        try:
            for index, (inputs, call_id, request_id) in enumerate(calls):
                self._counter, self._request_id = call_id, request_id
                try:
                    ready.append((index,) + self._prepare(inputs))
                except _Refused as refused:
                    answers[index] = refused.answer
            if not ready:
                return cast(List[Answer], answers)
            try:
                preds = predict([calls[index] for index, _, _ in ready], [prep for _, _, prep in ready])
            except _Refused as refused:  # the batch's own stage failed: each of its calls says so
                for index, _decoded, _prep in ready:
                    answers[index] = refused.answer
                return cast(List[Answer], answers)
            for (index, decoded, _prep), pred in zip(ready, preds):
                self._counter, self._request_id = calls[index][1], calls[index][2]
                try:
                    answers[index] = self._finish(pred, decoded)
                except _Refused as refused:
                    answers[index] = refused.answer
            return cast(List[Answer], answers)  # every call has its Answer by now
        finally:
            self._counter = None
            self._request_id = None
            self._batch_calls = None

    def _prepare(self, inputs: Inputs) -> Tuple[Inputs, Any]:
        """Decode the BASE64_KEYS inputs and run ``_pre_process``: ``(decoded, prepared)``."""
        try:
            decoded = _decode_base64_inputs(inputs)
        except _BadInput as exc:
            raise _Refused(self._bad_input_outcome('_pre_process', 400, str(exc))) from None
        return decoded, self._run_hook('_pre_process', self._pre_process, decoded)

    def _finish(self, pred: Any, decoded: Inputs) -> Answer:
        """``_post_process`` and the BASE64_OUTPUTS encoding: the call's Answer."""
        answer = self._run_hook('_post_process', self._post_process, pred)
        try:
            answer = _encode_base64_outputs(answer, decoded)
        except _BadInput as exc:
            raise _Refused(self._bad_input_outcome('_post_process', 400, str(exc))) from None
        except (TypeError, ValueError, UnicodeEncodeError) as exc:  # not JSON, or not in ENCODING
            raise _Refused(self._bad_input_outcome('_post_process', 500, 'BASE64_OUTPUTS: {}'.format(exc))) from None
        return Answer(200, {'predict_result': answer})

    def _predict_one(self, calls: Sequence[Call], prepared: List[Any]) -> List[Any]:
        # batching off: the hooks take one input, as they always did
        return [self._run_hook('_predict', self._predict, prepared[0])]

    def _predict_batch(self, calls: Sequence[Call], prepared: List[Any]) -> List[Any]:
        """``_batch`` -> ``_predict`` -> ``_unbatch`` with notifications going to every call of
        the batch: one prediction per call, or ``_Refused`` for all of them."""
        self._batch_calls = [(call_id, request_id) for _inputs, call_id, request_id in calls]
        self._counter = None
        self._request_id = ','.join(str(rid) for _c, rid in self._batch_calls if rid) or None
        try:
            batch = self._run_hook('_batch', self._batch, prepared)
            preds = self._run_hook('_predict', self._predict, batch)
            stage = '_predict'
            if type(self)._unbatch is not FlaskWorker._unbatch:
                preds, stage = self._run_hook('_unbatch', self._unbatch, preds), '_unbatch'
            return self._check_batch_length(stage, preds, len(prepared))
        finally:
            self._batch_calls = None

    def _check_batch_length(self, stage: str, preds: Any, expected: int) -> List[Any]:
        try:
            got = len(preds)
        except TypeError:
            got = None
        if got == expected:
            return list(preds)
        hook = getattr(type(self), stage)
        code = getattr(hook, '__code__', None)
        what = '{} results'.format(got) if got is not None else 'a {}, not a list'.format(type(preds).__name__)
        raise _Refused(self._error_outcome(stage, (
            'BatchSizeMismatch', code.co_filename if code else '', stage, code.co_firstlineno if code else 0,
            '{} returned {} for a batch of {} inputs; it must return one result per input, in order'.format(
                stage, what, expected))))

    def _run_hook(self, stage: str, hook: Callable[[Any], Any], arg: Any) -> Any:
        try:
            with tracing.hook_span(stage, self._request_id, self._batch_calls):  # OpenTelemetry, when on
                return hook(arg)
        # a user's hook may raise anything, sys.exit() too; it is reported, not lost, and
        # a SystemExit in a pool thread would otherwise end that thread with no answer
        except (Exception, SystemExit) as exc:
            err_type, err_file, err_func, err_line, err_msg = error_info(type(exc), exc, exc.__traceback__)
            info = (err_type, shown_path(err_file, folder_of(type(self))), err_func, err_line, err_msg)
            raise _Refused(self._error_outcome(stage, info)) from None

    def _error_outcome(self, stage: str, info: ErrorInfo) -> Answer:
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
        return Answer(STAGE_STATUS[stage], body)

    def _bad_input_outcome(self, stage: str, status: int, message: str) -> Answer:
        """The request's BASE64_* inputs could not be applied: the message names the key."""
        self.log.P('request {}: {}'.format(self._request_id or '-', message), color='r')
        details = {'ERR_TYPE': 'ValueError', 'ERR_MSG': message, 'ERR_FILE': '', 'ERR_FUNC': stage, 'ERR_LINE': 0}
        return Answer(status, {'{}_ERROR'.format(type(self).__name__): details, 'ERROR': message})

    # -- streaming: a _predict that yields ------------------------------------------------
    @classmethod
    def streams(cls, config: Optional[Mapping[str, Any]] = None) -> bool:
        """Whether this endpoint streams: ``STREAM`` in its config when given, else whether
        ``_predict`` is a generator function (a ``def`` with ``yield``)."""
        for key, value in (config or {}).items():
            if key.upper() == 'STREAM' and isinstance(value, bool):
                return value
        return inspect.isgeneratorfunction(cls._predict)


_END = object()  # the generator is exhausted


class ChunkStream:
    """The chunks of one streaming call. ``next_chunk()`` (blocking: call it from the
    worker's thread) runs the generator to its next ``yield`` and ``_post_process`` on the
    item: an Answer with ``{"predict_result": ...}``, an error Answer (the stream ends
    there), or None at the end. ``close()`` stops the generator (``GeneratorExit`` at its
    ``yield``, so its ``finally`` runs). Never raises."""

    def __init__(self, worker: FlaskWorker, items: Iterator[Any], inputs: Inputs, call_id: int,
                 request_id: Optional[str]) -> None:
        self.worker = worker
        self._items = items
        self._inputs = inputs
        self.call_id = call_id
        self.request_id = request_id
        self.count = 0
        self.finished = False

    def next_chunk(self) -> Optional[Answer]:
        if self.finished:
            return None
        worker = self.worker
        worker._counter, worker._request_id = self.call_id, self.request_id
        try:
            item = worker._run_hook('_predict', self._next_item, None)
            if item is _END:
                self.finished = True
                return None
            answer = worker._finish(item, self._inputs)
            self.count += 1
            return answer
        except _Refused as refused:
            self.close()
            return refused.answer
        finally:
            worker._counter = None
            worker._request_id = None

    def _next_item(self, _unused: object) -> Any:
        try:
            return next(self._items)
        except StopIteration:
            return _END

    def close(self) -> None:
        if self.finished:
            return
        self.finished = True
        close = getattr(self._items, 'close', None)
        if close is None:
            return
        # the user's finally may notify: under this call's id, as during the stream
        self.worker._counter, self.worker._request_id = self.call_id, self.request_id
        try:
            close()
        except Exception as exc:  # a user's finally may raise; it is logged, the worker serves on
            info = error_info(type(exc), exc, exc.__traceback__)
            self.worker.log.P('request {}: closing _predict failed: {}: {}'.format(
                self.request_id or '-', info[0], info[4]), color='r')
        finally:
            self.worker._counter = self.worker._request_id = None


Worker = FlaskWorker


def folder_of(cls: type) -> Optional[str]:
    """The folder of the file that defines ``cls``: endpoints/ for a user's worker class."""
    module_file = getattr(sys.modules.get(cls.__module__), '__file__', None)
    return os.path.dirname(os.path.abspath(module_file)) if module_file else None


def shown_path(path: str, folder: Optional[str]) -> str:
    """``path`` as an answer shows it (``ERR_FILE``): relative to the endpoints ``folder`` when
    it is inside it (``dummy_model_demo2.py``), else relative to the ``sys.path`` entry it was
    imported from (``numpy/core/fromnumeric.py``); an answer never shows where the server's
    files are."""
    if not path or path.startswith('<'):  # '<string>', '<frozen ...>'
        return path
    path = os.path.abspath(path)  # a server started with a relative --endpoints has relative names
    bases = ([folder] if folder else []) + sorted((p for p in sys.path if p and os.path.isabs(p)),
                                                  key=len, reverse=True)
    for base in bases:
        base = os.path.join(os.path.abspath(base), '')
        if path.startswith(base):
            return path[len(base):]
    return os.path.basename(path)


BINARY = 'binary'  # the ENCODING that leaves BASE64_KEYS as bytes
DEFAULT_ENCODING = 'utf-8'
# the original's 'ansi' is Windows' name for its code page: cp1252 everywhere else
_ENCODING_ALIASES: Dict[str, str] = {'ansi': 'cp1252'}


class _BadInput(Exception):
    """The request's BASE64_* inputs cannot be used: a 400 whose message names the key."""


def _encoding_of(inputs: Inputs) -> str:
    encoding = inputs.get('ENCODING') or DEFAULT_ENCODING
    if not isinstance(encoding, str):
        raise _BadInput('ENCODING must be the name of a text encoding (e.g. "utf-8") or "binary", '
                        'got {!r}'.format(encoding))
    encoding = _ENCODING_ALIASES.get(encoding.lower(), encoding)
    if encoding.lower() == BINARY:
        return BINARY
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise _BadInput('ENCODING {!r} is not a text encoding Python knows; use e.g. "utf-8", or "binary" '
                        'for bytes'.format(encoding)) from None
    return encoding


def _key_list(inputs: Inputs, name: str) -> List[Any]:
    keys = inputs.get(name)
    if not keys:
        return []
    if isinstance(keys, str):
        return [keys]
    if not isinstance(keys, list):
        raise _BadInput('{} must be a list of input names, got {}'.format(name, type(keys).__name__))
    return keys


def _decode_base64_inputs(inputs: Inputs) -> Inputs:
    """``BASE64_KEYS`` decoded to text with ``ENCODING`` (default utf-8), as the original did
    (``base64.b64decode(v).decode(ENCODING)``); to bytes with ``"ENCODING": "binary"``."""
    keys = _key_list(inputs, 'BASE64_KEYS')
    if not keys:
        return inputs
    encoding = _encoding_of(inputs)
    decoded = dict(inputs)
    for key in keys:
        if key not in decoded:
            raise _BadInput('BASE64_KEYS names {!r}, which is not in the inputs'.format(key))
        try:
            raw = base64.b64decode(decoded[key], validate=True)
        except (ValueError, TypeError, binascii.Error) as exc:
            raise _BadInput('input {!r} (in BASE64_KEYS) is not valid base64: {}'.format(key, exc)) from None
        if encoding == BINARY:
            decoded[key] = raw
            continue
        try:
            decoded[key] = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise _BadInput('input {!r} (in BASE64_KEYS) decodes to bytes that are not {} text ({}); set '
                            'ENCODING to its encoding, or "binary" for bytes'.format(key, encoding, exc.reason)) from None
    return decoded


def _encode_base64_outputs(answer: Any, inputs: Inputs) -> Any:
    """``BASE64_OUTPUTS`` keys of the answer base64-encoded: text with ``ENCODING``, bytes as
    they are, any other JSON value (a list, a dict, a number) as its JSON text, as the
    original did."""
    keys = _key_list(inputs, 'BASE64_OUTPUTS')
    if not keys or not isinstance(answer, dict):
        return answer
    encoding = _encoding_of(inputs)
    if encoding == BINARY:
        encoding = DEFAULT_ENCODING
    encoded = dict(answer)
    for key in keys:
        if key in encoded:
            value = encoded[key]
            if not isinstance(value, (str, bytes, bytearray)):
                value = dumps(value).decode('utf-8')
            if isinstance(value, str):
                value = value.encode(encoding)
            encoded[key] = base64.b64encode(value).decode('ascii')
    return encoded
