"""The notifications a model server keeps for ``/notifications``: bounded, thread-safe."""

import collections
import threading
import time
from typing import Any, Deque, Dict, List, Optional

GENERAL = 'GENERAL'

# one notification: NOTIFICATION_TYPE, MODULE, time, NOTIF and, when known, REQUEST_ID
Notification = Dict[str, Any]


class Notifications:
    """``{"GENERAL": [...], "<call_id>": [...]}``; the oldest call ids are dropped past
    ``max_calls`` so a long-running server does not grow without bound."""

    def __init__(self, max_calls: int = 1000, max_per_call: int = 100) -> None:
        self._lock = threading.Lock()
        self._by_call: 'collections.OrderedDict[str, Deque[Notification]]' = collections.OrderedDict()
        self._max_calls = max_calls
        self._max_per_call = max_per_call

    def add(self, call_id: object, notification_type: str, module: str, notif: Any,
            request_id: Optional[str] = None) -> None:
        """Record ``notif`` under ``str(call_id)`` (``GENERAL`` when ``call_id`` is None)."""
        key = GENERAL if call_id is None else str(call_id)
        item: Notification = {
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

    def snapshot(self) -> Dict[str, List[Notification]]:
        with self._lock:
            result: Dict[str, List[Notification]] = {GENERAL: []}
            result.update({k: list(v) for k, v in self._by_call.items()})
            return result
