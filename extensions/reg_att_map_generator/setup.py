"""Build the regional attention map CUDA kernel: `python setup.py install` in this folder."""
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

setup(name='rmnet_reg_att_map_generator',
      ext_modules=[CUDAExtension('rmnet_reg_att_map_generator',
                                 ['reg_att_map_generator_cuda.cpp', 'reg_att_map_generator.cu'],
                                 extra_compile_args={'cxx': ['-O3'], 'nvcc': ['-O3']})],
      cmdclass={'build_ext': BuildExtension})
