"""Pure rendering of a NIMService's children: spec + placement in, Kubernetes objects out."""

from nim_operator.render.children import Child, render_children
from nim_operator.render.deployment import render_deployment
from nim_operator.render.meta import Owner

__all__ = ["Child", "Owner", "render_children", "render_deployment"]
