"""ament_python package clino_vpr_ros. The version lives in package.xml only (ROS requires it there)."""

import re
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "clino_vpr_ros"
HERE = Path(__file__).parent
VERSION = re.search(r"<version>([^<]+)</version>", (HERE / "package.xml").read_text()).group(1)

# Robot runtime: no torch. Training/export side: torch and friends. ROS from wheels where no
# ROS 2 install exists (on a robot with ROS 2 installed from apt, skip the `ros` extra).
# Lower bounds = the oldest versions a supported ROS distro ships (Ubuntu 22.04 / Humble: Python 3.10,
# NumPy 1.21, SciPy 1.8, OpenCV 4.5.4, Matplotlib 3.5, tqdm 4.57, PyYAML 5.4); scripts/test_humble.sh runs
# the runtime tests on them. numpy 1.21.6: the first that onnxruntime >= 1.14 (ONNX opset 18) accepts.
RUNTIME = [
    "numpy>=1.21.6",
    "scipy>=1.8",
    "opencv-python-headless>=4.5.4",
    "onnxruntime>=1.17",  # onnxruntime-gpu on a robot with a GPU
    "faiss-cpu>=1.8",  # faiss-gpu on a robot with a GPU
    "rosbags>=0.11",
    "gtsam>=4.2",
    "matplotlib>=3.5",
    "tqdm>=4.57",
    "pyyaml>=5.4",
    "pillow>=9.0.1",  # PIL bilinear resize, the preprocessing imported SALAD weights expect (Humble: 9.0.1)
]
TRAIN = [
    "torch>=2.2",
    "transformers>=4.40",
    "safetensors>=0.4",
    "pytorch-metric-learning>=2.5",
    "onnx>=1.16",
]
# Fleet index (clino-vpr fleet, fleet_uri): the Milvus client, and the `milvus` wheel that runs a real
# Milvus standalone server locally (tests, `clino-vpr fleet serve`, `clino-vpr bench fleet`).
# pymilvus 2.3 imports pkg_resources (setuptools < 81; torch wants >= 77.0.3) and its `environs`
# dependency breaks with marshmallow 4.
FLEET = [
    "pymilvus>=2.3,<2.4",
    "milvus>=2.3,<2.4",
    "setuptools>=77.0.3,<81",
    "marshmallow<4",
]
ROS_WHEELS = [
    "ros-rclpy[fastrtps]",
    "ros-sensor-msgs",
    "ros-nav-msgs",
    "ros-geometry-msgs",
    "ros-std-msgs",
    "ros-std-srvs",
    "ros-visualization-msgs",
    "ros-diagnostic-msgs",
]

setup(
    name=PACKAGE,
    version=VERSION,
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/models", glob("models/*.onnx") + glob("models/*.md") + glob("models/*.json")
         + glob("models/*.png")),  # the model card's figures
    ],
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={"train": TRAIN, "ros": ROS_WHEELS, "fleet": FLEET,
                    "test": ["pytest>=7", "wheel"]},  # wheel: the install test builds one
    zip_safe=True,
    maintainer="clino_vpr_ros maintainers",
    maintainer_email="maintainers@clino-vpr.invalid",
    description="Learned loop closure for ROS 2: CLINO-VPR gated encoder, faiss keyframe index, "
    "verified loop closures and multi-session maps.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "clino-vpr = clino_vpr_ros.cli:main",
            "clino_vpr_node = clino_vpr_ros.ros.node:main",
        ],
    },
)
