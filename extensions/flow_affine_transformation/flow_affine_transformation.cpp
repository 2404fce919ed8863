// Optical flow update after both frames of a flow pair were warped by their own affine maps.
// Plain Python C API (buffer protocol), so it builds in about a second with any C++ compiler.
// Compile without floating-point contraction: the NumPy path computes the same expressions in
// the same order in float64, and the two must agree bit for bit.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cmath>

namespace {

double sample(const float *flow, long width, long x, long y, int c) {
  return static_cast<double>(flow[(y * width + x) * 2 + c]);
}

// flow: (height, width, 2) float32; out: (out_height, out_width, 2) float32.
// to_src maps a pixel of the warped frame t to the original frame t; prev_from_src maps a point
// of the original frame t-1 to the warped frame t-1.
void update(const float *flow, long height, long width, float *out, long out_height,
            long out_width, const double *to_src, const double *prev_from_src) {
  for (long yo = 0; yo < out_height; ++yo) {
    for (long xo = 0; xo < out_width; ++xo) {
      const double x = static_cast<double>(xo);
      const double y = static_cast<double>(yo);
      const double px = to_src[0] * x + to_src[1] * y + to_src[2];
      const double py = to_src[3] * x + to_src[4] * y + to_src[5];
      float *o = out + (yo * out_width + xo) * 2;
      if (!(px >= 0.0 && px <= width - 1.0 && py >= 0.0 && py <= height - 1.0)) {
        o[0] = 0.f;
        o[1] = 0.f;
        continue;
      }
      const double fx = std::floor(px);
      const double fy = std::floor(py);
      const long x0 = static_cast<long>(fx);
      const long y0 = static_cast<long>(fy);
      const long x1 = x0 + 1 < width ? x0 + 1 : width - 1;
      const long y1 = y0 + 1 < height ? y0 + 1 : height - 1;
      const double wx = px - fx;
      const double wy = py - fy;
      double value[2];
      for (int c = 0; c < 2; ++c) {
        const double top = (1.0 - wx) * sample(flow, width, x0, y0, c) +
                           wx * sample(flow, width, x1, y0, c);
        const double bottom = (1.0 - wx) * sample(flow, width, x0, y1, c) +
                              wx * sample(flow, width, x1, y1, c);
        value[c] = (1.0 - wy) * top + wy * bottom;
      }
      const double qx = px + value[0];
      const double qy = py + value[1];
      const double nx = prev_from_src[0] * qx + prev_from_src[1] * qy + prev_from_src[2];
      const double ny = prev_from_src[3] * qx + prev_from_src[4] * qy + prev_from_src[5];
      o[0] = static_cast<float>(nx - x);
      o[1] = static_cast<float>(ny - y);
    }
  }
}

PyObject *update_flow(PyObject *, PyObject *args) {
  Py_buffer flow, out;
  long height, width, out_height, out_width;
  double to_src[6], prev_from_src[6];
  if (!PyArg_ParseTuple(args, "y*w*llll(dddddd)(dddddd)", &flow, &out, &height, &width,
                        &out_height, &out_width, &to_src[0], &to_src[1], &to_src[2],
                        &to_src[3], &to_src[4], &to_src[5], &prev_from_src[0],
                        &prev_from_src[1], &prev_from_src[2], &prev_from_src[3],
                        &prev_from_src[4], &prev_from_src[5])) {
    return nullptr;
  }
  const bool sizes_ok =
      flow.len == static_cast<Py_ssize_t>(height * width * 2 * sizeof(float)) &&
      out.len == static_cast<Py_ssize_t>(out_height * out_width * 2 * sizeof(float));
  if (sizes_ok) {
    Py_BEGIN_ALLOW_THREADS
    update(static_cast<const float *>(flow.buf), height, width, static_cast<float *>(out.buf),
           out_height, out_width, to_src, prev_from_src);
    Py_END_ALLOW_THREADS
  }
  PyBuffer_Release(&flow);
  PyBuffer_Release(&out);
  if (!sizes_ok) {
    PyErr_SetString(PyExc_ValueError, "update_flow: buffer sizes do not match the shapes");
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"update_flow", update_flow, METH_VARARGS,
     "update_flow(flow, out, height, width, out_height, out_width, to_src, prev_from_src)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "rmnet_flow_affine_transformation",
                          "Optical flow update under affine warps", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_rmnet_flow_affine_transformation(void) { return PyModule_Create(&module_def); }
