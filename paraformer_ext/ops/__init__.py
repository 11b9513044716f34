"""Custom ops. Each op module has `<op>_fn` (the compiled kernel, with autograd and a fake impl) and
`<op>_ref` (plain PyTorch, same signature, the oracle of every test), plus `<op>` which picks one."""
