"""Code figures of a checkout, as the maintainer's review quotes them: lines and modules of
src/windowguide, functions longer than 50 lines, functions with more than 10 parameters.

    python scripts/code_figures.py [ROOT] [--list N]     # ROOT: a checkout (default: this one)
"""
import argparse
import ast
import os


def figures(root: str) -> tuple[dict, list]:
    lines = modules = many = 0
    longs = []
    for folder, _, files in os.walk(os.path.join(root, "src", "windowguide")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            text = open(path, encoding="utf-8").read()
            modules, lines = modules + 1, lines + text.count("\n")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    a = node.args
                    if len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) > 10:
                        many += 1
                    if node.end_lineno - node.lineno + 1 > 50:
                        longs.append((node.end_lineno - node.lineno + 1, os.path.relpath(path, root), node.name))
    return dict(lines=lines, modules=modules, long_functions=len(longs), many_parameters=many), sorted(longs)[::-1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--list", type=int, default=0, help="list the N longest functions")
    args = parser.parse_args()
    counts, longs = figures(args.root)
    print(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
    for n, path, name in longs[:args.list]:
        print(f"  {n:4d}  {path}  {name}")
