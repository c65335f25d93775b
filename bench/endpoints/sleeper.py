import time

from bis_twisted import FlaskWorker


class SleeperWorker(FlaskWorker):
    """A model that takes 1 s (time.sleep): concurrency comes from NR_WORKERS alone."""

    def _pre_process(self, inputs):
        return float(inputs.get('SECONDS', 1.0))

    def _predict(self, seconds):
        time.sleep(seconds)
        return seconds

    def _post_process(self, pred):
        return {'slept': pred}
