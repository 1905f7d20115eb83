"""docs/security.md names the tests that prove each claim: every test it
names must exist, so a renamed or moved test cannot leave the page pointing
at nothing."""

import ast
import os
import re

from tests import base

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# tests/x/y.py, optionally ::Class and ::test; "::Name" alone continues the
# previous reference's file (and class, for a test name).
_REFERENCE = re.compile(
    r"((?:[\w.-]+/)*tests/[\w/]+\.py)((?:::\w+)*)|(?<![\w/])::(\w+)")


def _names(path):
    """``{class: {method, ...}}`` (methods of base classes defined in the
    same module included), and ``{None: {every function and method}}``
    for a test named without its class."""
    with open(os.path.join(REPO, path)) as stream:
        tree = ast.parse(stream.read())
    own, bases = {}, {}
    everything = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            own[node.name] = {item.name for item in node.body
                              if isinstance(item, ast.FunctionDef)}
            bases[node.name] = [b.id for b in node.bases
                                if isinstance(b, ast.Name)]
            everything |= own[node.name]
        elif isinstance(node, ast.FunctionDef):
            everything.add(node.name)

    def methods(name, seen=()):
        found = set(own.get(name, ()))
        for parent in bases.get(name, ()):
            if parent not in seen:
                found |= methods(parent, seen + (name,))
        return found
    classes = {name: methods(name) for name in own}
    classes[None] = everything
    return classes


class SecurityDocTest(base.TestCase):
    def test_every_named_test_exists(self):
        with open(os.path.join(REPO, "docs", "security.md")) as stream:
            text = stream.read()
        missing = []
        checked = 0
        for line in text.splitlines():
            current_file = current_class = None
            for match in _REFERENCE.finditer(line):
                if match.group(1):
                    current_file = match.group(1)
                    if not os.path.exists(os.path.join(REPO, current_file)):
                        missing.append(current_file)
                        current_file = None
                        continue
                    parts = [p for p in match.group(2).split("::") if p]
                    classes = _names(current_file)
                    current_class = None
                    if len(parts) == 1 and parts[0] not in classes:
                        # A test named without its class.
                        checked += 1
                        if parts[0] not in classes[None]:
                            missing.append("%s::%s" % (current_file,
                                                       parts[0]))
                        continue
                    if parts:
                        current_class = parts[0]
                        if current_class not in classes:
                            missing.append("%s::%s" % (current_file,
                                                       current_class))
                            continue
                    for name in parts[1:]:
                        checked += 1
                        if name not in classes[current_class]:
                            missing.append("%s::%s::%s" % (
                                current_file, current_class, name))
                elif current_file is not None:
                    name = match.group(3)
                    classes = _names(current_file)
                    if name in classes:
                        current_class = name
                    elif current_class is None or \
                            name not in classes[current_class]:
                        missing.append("%s::...::%s" % (current_file, name))
                    else:
                        checked += 1
        self.maxDiff = None
        self.assertEqual([], missing)
        self.assertGreater(checked, 50)
