"""LitServe serving the original's dummy_model_demo2 (``endpoints/dummy_model_demo2.py``: the
same arithmetic, the same answer): ``python litserve_demo2.py PORT WORKERS WEIGHT BIAS``.
Run by ``bench/peer_bench.py`` from its own venv (bench/.peers-venv), never the project's."""

import sys

import litserve as ls


class Demo2API(ls.LitAPI):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = weight, bias

    def setup(self, device):
        pass

    def decode_request(self, request):
        if 'INPUT_VALUE' not in request:
            raise ValueError('INPUT_VALUE should be defined in inputs')
        return request['INPUT_VALUE']

    def predict(self, value):
        value = int(value)
        return '{}*{} + {} = {} PREDICTED'.format(value, self.weight, self.bias, value * self.weight + self.bias)

    def encode_response(self, output):
        return {'predict_result': {'dummy_model_predict': output}}


if __name__ == '__main__':
    port, workers, weight, bias = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    server = ls.LitServer(Demo2API(weight, bias), accelerator='cpu', workers_per_device=workers, timeout=30)
    server.run(port=port, host='127.0.0.1', generate_client_file=False)
