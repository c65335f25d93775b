from bis_twisted import FlaskWorker


class CpuBoundWorker(FlaskWorker):
    """CPU-bound pure Python (holds the GIL): one process uses one core however many workers."""

    def _pre_process(self, inputs):
        return int(inputs.get('INPUT_VALUE', 200000))

    def _predict(self, n):
        total = 0
        for i in range(n):
            total += i % 7
        return total

    def _post_process(self, pred):
        return {'total': pred}
