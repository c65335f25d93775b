"""The notifications a model server keeps for ``/notifications``: bounded, thread-safe."""

import collections
import threading
import time

GENERAL = 'GENERAL'


class Notifications:
    """``{"GENERAL": [...], "<call_id>": [...]}``; the oldest call ids are dropped past
    ``max_calls`` so a long-running server does not grow without bound."""

    def __init__(self, max_calls=1000, max_per_call=100):
        self._lock = threading.Lock()
        self._by_call = collections.OrderedDict()
        self._max_calls = max_calls
        self._max_per_call = max_per_call

    def add(self, call_id, notification_type, module, notif, request_id=None):
        key = GENERAL if call_id is None else str(call_id)
        item = {
            'NOTIFICATION_TYPE': notification_type,
            'MODULE': module,
            'time': time.strftime('%Y-%m-%d %H:%M:%S'),
            'NOTIF': notif,
        }
        if request_id is not None:
            item['REQUEST_ID'] = request_id
        with self._lock:
            items = self._by_call.setdefault(key, collections.deque(maxlen=self._max_per_call))
            items.append(item)
            self._by_call.move_to_end(key)
            while len(self._by_call) > self._max_calls:
                oldest = next(iter(self._by_call))
                if oldest == GENERAL and len(self._by_call) > 1:
                    self._by_call.move_to_end(GENERAL)
                    continue
                del self._by_call[oldest]

    def snapshot(self):
        with self._lock:
            result = {GENERAL: []}
            result.update({k: list(v) for k, v in self._by_call.items()})
            return result
