# file: ./run_gateway.py

import sys
import os
import platform

import argparse

from basic_inference_server import Logger
from basic_inference_server import FlaskGateway, get_packages

from time import sleep

from app_ver import __VER__ as APP_VER
from basic_inference_server import LIB_VER

  

  
if __name__ == '__main__':  
  parser = argparse.ArgumentParser()

  parser.add_argument(
    '-b', '--base_folder',
    type=str, default='.',
    help='Local cache base folder'
  )

  parser.add_argument(
    '-a', '--app_folder',
    type=str, default='_cache',
    help='Local cache app folder'
  )

  parser.add_argument(
    '--host', type=str, default='0.0.0.0'
  )

  parser.add_argument(
    '--port', type=int, default=5002
  )

  args = parser.parse_args()
  base_folder = args.base_folder
  app_folder = args.app_folder
  host = args.host
  port = args.port

  ### Attention! config_file should contain the configuration for each endpoint; 'NR_WORKERS' and upstream configuration
  log = Logger(
    lib_name='AIAPP',
    config_file='config_gateway.txt',
    base_folder=base_folder, app_folder=app_folder,
    TF_KERAS=False
  )

  running_in_docker = os.environ.get('AID_APP_DOCKER', False) == "Yes"
  ee_id = os.environ.get('AID_APP_ID', 'aid_app_bare_metal')
  show_packs = os.environ.get('SHOW_PACKS')
  tz = os.environ.get('TZ', None)
  path = os.getcwd()
  log.P("Running in DEBUG mode" if in_debug else "Running in normal mode (NO debug enabled)")
  packs = get_packages()
  log.P("Running {} test v{} '{}', TZ: {}, py: {}, OS: {}, Docker: {}".format(
    ee_id,
    APP_VER,
    path, 
    tz,
    sys.version.split(' ')[0], 
    platform.platform(), 
    running_in_docker
    ), color='g'
  )  
  log.P("Show packages: {}".format(show_packs))
  if show_packs in ['Yes', 'YES', 'yes']:
    log.P("Packages: \n{}".format("\n".join(packs)))
    
  sleep(3)

  gtw = FlaskGateway(
    log=log,
    # server_names=['get_tags', 'get_qa', 'get_sim', 'get_aprox', 'get_conf'],
    workers_location='endpoints',
    workers_suffix='Worker',
    host=host,
    port=port,
    #first_server_port=5020,
    server_execution_path='/run'
  )
  
