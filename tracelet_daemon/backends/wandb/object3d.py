"""Meshes as the files ``wandb.Object3D`` shows: binary glTF (GLB) for meshes, points otherwise.

W&B's 3D panel reads OBJ/GLTF/GLB/STL files and point clouds (``[x, y, z, r, g, b]`` rows). Only
glTF carries per-vertex colors in a standard way, so a mesh with faces becomes a GLB written here
(deterministic: the same mesh gives the same bytes); a mesh without faces is a point cloud.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from ...values import Mesh

_FLOAT, _UINT32 = 5126, 5125  # glTF accessor component types
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_TRIANGLES = 4


def mesh_items(mesh: Mesh) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """(vertices [n, 3], faces [f, 3] or None, colors [n, 3] in 0-255 or None) per batch item.

    Raises ValueError for what no viewer could show: no vertices, parts whose sizes disagree,
    faces pointing at vertices that do not exist, non-finite coordinates.
    """
    if not mesh.vertices:
        raise ValueError("mesh without vertices")
    vertices = _part(mesh.vertices, mesh.batch, "vertices")
    faces = _part(mesh.faces, mesh.batch, "faces") if mesh.faces else None
    colors = _part(mesh.colors, mesh.batch, "colors") if mesh.colors else None
    if colors is not None and colors.shape != vertices.shape:
        raise ValueError(f"{colors.shape[1]} colors for {vertices.shape[1]} vertices")
    if not np.isfinite(vertices).all():
        raise ValueError("mesh with non-finite vertex coordinates")
    if faces is not None and faces.size and (
            (faces != np.round(faces)).any() or faces.min() < 0 or faces.max() >= vertices.shape[1]):
        raise ValueError(f"faces refer to vertices outside 0..{vertices.shape[1] - 1}")
    return [(vertices[i], None if faces is None else faces[i].astype(np.uint32),
             None if colors is None else colors[i]) for i in range(mesh.batch)]


def _part(data: bytes, batch: int, what: str) -> np.ndarray:
    arr = np.frombuffer(data, dtype="<f4")
    if batch <= 0 or arr.size % (3 * batch):
        raise ValueError(f"mesh {what} of {arr.size} numbers do not split into {batch} item(s) of 3-vectors")
    return arr.reshape(batch, -1, 3)


def glb_bytes(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None) -> bytes:
    """A binary glTF 2.0 file: one triangle mesh, vertex colors (0-255 → 0..1) as COLOR_0."""
    positions = np.ascontiguousarray(vertices, dtype="<f4")
    views: list[bytes] = [positions.tobytes()]
    attributes = {"POSITION": 0}
    accessors: list[dict] = [{"bufferView": 0, "componentType": _FLOAT, "count": len(positions), "type": "VEC3",
                              "min": [float(x) for x in positions.min(axis=0)],
                              "max": [float(x) for x in positions.max(axis=0)]}]
    if colors is not None:
        rgb = np.clip(np.asarray(colors, dtype=np.float64) / 255.0, 0.0, 1.0).astype("<f4")
        attributes["COLOR_0"] = len(views)
        accessors.append({"bufferView": len(views), "componentType": _FLOAT, "count": len(rgb), "type": "VEC3"})
        views.append(rgb.tobytes())
    indices = np.ascontiguousarray(faces, dtype="<u4").reshape(-1)
    primitive: dict[str, object] = {"attributes": attributes, "mode": _TRIANGLES, "indices": len(views)}
    accessors.append({"bufferView": len(views), "componentType": _UINT32, "count": int(indices.size),
                      "type": "SCALAR"})
    views.append(indices.tobytes())
    binary, buffer_views = b"", []
    for i, view in enumerate(views):  # every view starts 4-byte aligned (sizes are multiples of 4)
        target = _ELEMENT_ARRAY_BUFFER if i == len(views) - 1 else _ARRAY_BUFFER
        buffer_views.append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(view), "target": target})
        binary += view
    doc = {"asset": {"version": "2.0", "generator": "tracelet"}, "scene": 0, "scenes": [{"nodes": [0]}],
           "nodes": [{"mesh": 0}], "meshes": [{"primitives": [primitive]}],
           "buffers": [{"byteLength": len(binary)}], "bufferViews": buffer_views, "accessors": accessors}
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(text), b"JSON") + text
            + struct.pack("<I4s", len(binary), b"BIN\0") + binary)


def point_rows(vertices: np.ndarray, colors: np.ndarray | None) -> np.ndarray:
    """A point cloud as W&B takes it: ``[x, y, z]`` rows, or ``[x, y, z, r, g, b]`` with colors."""
    if colors is None:
        return np.asarray(vertices, dtype=np.float64)
    return np.hstack([np.asarray(vertices, dtype=np.float64), np.asarray(colors, dtype=np.float64)])
