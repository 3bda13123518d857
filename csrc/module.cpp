// attnkern._C as a Python module: importing it loads this library, whose static initialisers
// register the ops with the dispatcher (torch.ops.attnkern.*). It exposes nothing itself.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "attnkern's kernels; call them through torch.ops.attnkern.", -1, nullptr};
  return PyModule_Create(&module);
}
