"""`--mode=describe`: every key of a config with its value and what it means, grouped by section, read from the
comments and docstrings of vitjax/configs/common.py (where every key is defined once). Needs neither JAX nor TensorFlow.
"""

import ast
import dataclasses
import io
import tokenize
from collections.abc import Iterator
from typing import Any

import ml_collections

GENERAL = "general"


@dataclasses.dataclass
class Doc:
  """What vitjax/configs/common.py says about a key: a comment block above it, a comment beside it, and its line."""

  above: str = ""
  beside: str = ""
  line: int = 0


def key_docs(source: str) -> dict[str, Doc]:
  """The `Doc` of every dotted key ("batch_size", "data.pp_train", "model.name") defined in `source`, the text of
  vitjax/configs/common.py and sections.py; a section ("data") is documented by its builder's docstring and the
  comment above its return."""
  tree = ast.parse(source)
  comments = _comments(source)
  functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
  docs: dict[str, Doc] = {}
  sections = {"get_base_config": ""}
  for node in ast.walk(functions.get("get_base_config", tree)):
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
      builder = getattr(node.value.func, "id", getattr(node.value.func, "attr", None))  # _data() or sections.explain()
      if builder in functions and isinstance(node.targets[0], ast.Attribute):
        sections[builder] = node.targets[0].attr
  for name, prefix in sections.items():
    function = functions.get(name)
    if function is None:
      continue
    if prefix:  # Keeps the line of `config.<prefix> = ...`, so that sections come in the order they are set.
      seen, docstring = (
        docs.get(prefix, Doc(line=function.lineno)),
        " ".join((ast.get_docstring(function) or "").split()),
      )
      docs[prefix] = Doc(above=" ".join(filter(None, (seen.above, docstring, seen.beside))), line=seen.line)
    for node in function.body:
      _statement_docs(node, prefix, comments, docs)
  return docs


def describe(config: ml_collections.ConfigDict, docs: dict[str, Doc]) -> str:
  """Every key of `config` as `key = value  # doc`, top-level values first, then one block per section."""

  def order(key: str) -> tuple[int, str]:
    return (docs[key].line if key in docs else 1 << 30, key)

  general = sorted((k for k in config.keys() if not isinstance(config[k], ml_collections.ConfigDict)), key=order)
  sections = sorted((k for k in config.keys() if isinstance(config[k], ml_collections.ConfigDict)), key=order)
  lines = [f"[{GENERAL}]", *_key_lines(config, general, "", docs, order)]
  for section in sections:
    heading = " ".join(filter(None, (docs.get(section, Doc()).above, docs.get(section, Doc()).beside)))
    lines += ["", f"[{section}]" + (f"  {heading}" if heading else "")]
    keys = sorted(config[section].keys(), key=lambda k, s=section: order(f"{s}.{k}"))
    lines += _key_lines(config[section], keys, section, docs, order)
  return "\n".join(lines)


def _key_lines(config, keys, prefix: str, docs: dict[str, Doc], order) -> Iterator[str]:
  for key in keys:
    full = f"{prefix}.{key}" if prefix else key
    doc, value = docs.get(full, Doc()), config[key]
    if doc.above:
      yield f"  # {doc.above}"
    if isinstance(value, ml_collections.ConfigDict):
      nested = sorted(value.keys(), key=lambda k: order(f"{full}.{k}"))
      yield from _key_lines(value, nested, full, docs, order)
    else:
      yield f"  {full} = {_show(value)}" + (f"  # {doc.beside}" if doc.beside else "")


def _show(value: Any) -> str:
  return repr(tuple(value)) if isinstance(value, list) else repr(value)


def _statement_docs(node: ast.stmt, prefix: str, comments: dict[int, tuple[str, bool]], docs: dict[str, Doc]):
  """Docs of the keys a statement of a section builder defines: `x.key = value` or `return ConfigDict({...})`."""
  if isinstance(node, ast.Return) and node.value is not None:
    above = _above(node.lineno, comments)
    if above and prefix in docs:
      docs[prefix].above = f"{docs[prefix].above} {above}".strip()
    _dict_docs(node.value, prefix, comments, docs)
    return
  if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)):
    return
  key = f"{prefix}.{node.targets[0].attr}" if prefix else node.targets[0].attr
  beside = comments.get(node.lineno, ("", True))
  docs[key] = Doc(above=_above(node.lineno, comments), beside="" if beside[1] else beside[0], line=node.lineno)
  _dict_docs(node.value, key, comments, docs)


def _dict_docs(value: ast.expr, prefix: str, comments: dict[int, tuple[str, bool]], docs: dict[str, Doc]) -> None:
  """Docs of the keys of a dict literal (or `ConfigDict({...})`) spread over lines, one comment beside each."""
  if isinstance(value, ast.Call) and value.args:
    value = value.args[0]
  if not isinstance(value, ast.Dict) or value.lineno == value.end_lineno:
    return
  for key_node, item in zip(value.keys, value.values, strict=True):
    if isinstance(key_node, ast.Constant) and isinstance(key_node.value, str):
      key = f"{prefix}.{key_node.value}"
      text, full_line = comments.get(item.end_lineno, ("", True))
      docs[key] = Doc(above=_above(key_node.lineno, comments), beside="" if full_line else text, line=item.lineno)
      _dict_docs(item, key, comments, docs)


def _above(line: int, comments: dict[int, tuple[str, bool]]) -> str:
  """The block of whole-line comments just above `line`, as one line."""
  block = []
  while comments.get(line - 1, ("", False))[1]:
    line -= 1
    block.insert(0, comments[line][0])
  return " ".join(block)


def _comments(source: str) -> dict[int, tuple[str, bool]]:
  """line -> (comment text, whether the comment is the whole line)."""
  comments = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      whole = not token.line[: token.start[1]].strip()
      comments[token.start[0]] = (token.string.lstrip("#").strip(), whole)
  return comments


def add_docs(docs: dict[str, Doc], prefix: str, beside: dict[str, str]) -> None:
  """Docs from elsewhere (`models.option_docs()` for `config.model`) for the keys under `prefix` that
  vitjax/configs/common.py leaves undocumented, in the order given."""
  start = docs.get(prefix, Doc()).line
  for index, (key, text) in enumerate(beside.items()):
    doc = docs.setdefault(f"{prefix}.{key}", Doc(line=start + index))
    doc.beside = doc.beside or text
