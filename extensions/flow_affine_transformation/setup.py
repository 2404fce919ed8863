"""Build the flow affine update op: `python setup.py install` in this folder."""
from setuptools import Extension, setup

setup(name='rmnet_flow_affine_transformation',
      ext_modules=[Extension('rmnet_flow_affine_transformation', ['flow_affine_transformation.cpp'],
                             extra_compile_args=['-O3', '-ffp-contract=off'], language='c++')])
