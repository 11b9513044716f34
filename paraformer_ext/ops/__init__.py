"""Custom ops. Each op module has `<op>_fn` (the compiled kernel, with autograd and a fake impl where it has
them) beside `<op>_ref` (plain PyTorch, same signature, the oracle of every test). Where callers pick at run
time, a dispatcher (`cif`, `fsmn_memory`, `out_proj_argmax`, `hotword_decode`, the int8 functions) chooses by `kernels=` through
the one rule, `_ext.use_kernels`; ops/sanm.py and ops/linear.py are chosen by the model's modules."""
