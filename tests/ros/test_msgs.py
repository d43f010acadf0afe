"""vgssl_msgs: the interfaces are what nodes and users rely on, and they work over real DDS."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image

from vgssl_core.localization.image_codec import encode_compressed, encode_raw
from vgssl_msgs.msg import Localization, PlaceMatch
from vgssl_msgs.srv import LocalizeImage


def make_localization() -> Localization:
    msg = Localization()
    msg.header.stamp.sec = 1_700_000_000
    msg.header.stamp.nanosec = 123_456_789
    msg.header.frame_id = "utm"
    msg.utm_zone = 32
    msg.utm_band = "T"
    msg.easting, msg.northing = 396012.5, 4991003.25
    msg.latitude, msg.longitude = 45.0712345, 7.6812345
    msg.position_covariance_type = Localization.COVARIANCE_TYPE_APPROXIMATED
    msg.position_covariance = [25.0, 1.5, 1.5, 16.0]
    msg.confidence = 0.75
    msg.matches = [
        PlaceMatch(database_index=i, image_id=f"@{396000 + 5 * i}@4991000@32@T@45.07@7.68@.jpg",
                   descriptor_distance=0.25 * (i + 1), easting=396000.0 + 5 * i, northing=4991000.0,
                   latitude=45.07, longitude=7.68)
        for i in range(3)
    ]
    msg.descriptor_latency = 0.015625  # float32 fields: values exact in binary compare equal
    msg.processing_latency = 0.03125
    return msg


def test_fields_have_the_documented_types():
    """Nodes, bags and users' code depend on these names and types: change them on purpose only."""
    assert Localization.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "utm_zone": "uint8",
        "utm_band": "string",
        "easting": "double",
        "northing": "double",
        "latitude": "double",
        "longitude": "double",
        "position_covariance_type": "uint8",
        "position_covariance": "double[4]",
        "confidence": "float",
        "matches": "sequence<vgssl_msgs/PlaceMatch>",
        "descriptor_latency": "float",
        "processing_latency": "float",
    }
    assert PlaceMatch.get_fields_and_field_types() == {
        "database_index": "uint32",
        "image_id": "string",
        "descriptor_distance": "float",
        "easting": "double",
        "northing": "double",
        "latitude": "double",
        "longitude": "double",
    }
    assert LocalizeImage.Request.get_fields_and_field_types() == {
        "image": "sensor_msgs/Image",
        "compressed_image": "sensor_msgs/CompressedImage",
        "use_compressed": "boolean",
        "top_k": "uint16",
    }
    assert LocalizeImage.Response.get_fields_and_field_types() == {
        "success": "boolean",
        "message": "string",
        "localization": "vgssl_msgs/Localization",
    }


def test_covariance_type_constants_match_navsatfix():
    from sensor_msgs.msg import NavSatFix

    for name in ("UNKNOWN", "APPROXIMATED", "DIAGONAL_KNOWN", "KNOWN"):
        assert getattr(Localization, f"COVARIANCE_TYPE_{name}") == getattr(NavSatFix, f"COVARIANCE_TYPE_{name}")


def test_a_new_fix_has_unknown_zero_covariance():
    msg = Localization()
    assert list(msg.position_covariance) == [0.0] * 4
    assert msg.position_covariance_type == Localization.COVARIANCE_TYPE_UNKNOWN


def test_localization_round_trips_through_serialization():
    msg = make_localization()
    back = deserialize_message(serialize_message(msg), Localization)
    assert back == msg
    assert [m.image_id for m in back.matches] == [m.image_id for m in msg.matches]
    assert back.header.stamp.nanosec == 123_456_789


def test_service_request_and_response_round_trip():
    step, data = encode_raw(np.full((4, 6, 3), 7, np.uint8), "bgr8")
    request = LocalizeImage.Request(
        image=Image(height=4, width=6, encoding="bgr8", step=step, data=data),
        compressed_image=CompressedImage(format="jpeg", data=b"\xff\xd8\xff"),
        use_compressed=True,
        top_k=5,
    )
    assert deserialize_message(serialize_message(request), LocalizeImage.Request) == request
    response = LocalizeImage.Response(success=True, message="ok", localization=make_localization())
    assert deserialize_message(serialize_message(response), LocalizeImage.Response) == response


# --- over real DDS, between processes ------------------------------------------------------

SERVER = textwrap.dedent(
    '''
    """A stand-in localizer: decodes the request's image and answers with a made-up fix."""
    import rclpy
    from rclpy.node import Node

    from vgssl_core.errors import VgsslError
    from vgssl_core.localization.image_codec import decode_compressed, decode_raw
    from vgssl_msgs.msg import PlaceMatch
    from vgssl_msgs.srv import LocalizeImage


    class FakeLocalizer(Node):
        def __init__(self):
            super().__init__("fake_localizer")
            self.top_k = self.declare_parameter("top_k", 3).value
            self.create_service(LocalizeImage, "localize_image", self.on_request)
            self.get_logger().info("fake localizer ready")

        def on_request(self, request, response):
            try:
                if request.use_compressed:
                    header = request.compressed_image.header
                    rgb = decode_compressed(request.compressed_image.data, request.compressed_image.format)
                else:
                    img = request.image
                    header = img.header
                    rgb = decode_raw(img.encoding, img.height, img.width, img.step, img.data, img.is_bigendian)
            except VgsslError as err:
                response.success, response.message = False, str(err)
                return response
            mean = [int(round(float(v))) for v in rgb.reshape(-1, 3).mean(axis=0)]
            loc = response.localization
            loc.header.stamp = header.stamp
            loc.header.frame_id = "utm"
            loc.utm_zone, loc.utm_band = 32, "T"
            loc.easting, loc.northing = 396000.0 + mean[0], 4991000.0 + mean[2]
            loc.confidence = 0.5
            loc.matches = [
                PlaceMatch(database_index=i, image_id=f"db_{i}", descriptor_distance=0.1 * i)
                for i in range(request.top_k or self.top_k)
            ]
            response.success = True
            response.message = f"{rgb.shape[1]}x{rgb.shape[0]} mean rgb {mean}"
            return response


    make_node, run = FakeLocalizer, rclpy.spin
    '''
)

IMAGE_PUBLISHER = textwrap.dedent(
    '''
    """Publishes N camera-sized rgb8 frames at a fixed rate once a subscriber is matched."""
    import sys
    import time

    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image


    def make_node():
        return rclpy.create_node("image_source")


    def run(node):
        frames = node.declare_parameter("frames", 40).value
        rate = node.declare_parameter("rate", 20.0).value
        pub = node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
        while pub.get_subscription_count() == 0:
            rclpy.spin_once(node, timeout_sec=0.05)
        time.sleep(0.5)  # let the subscriber's side of the match settle too
        msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3)
        msg.header.frame_id = "camera"
        msg.data = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8).tobytes()
        start = time.monotonic()
        for i in range(frames):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            msg.header.stamp.sec = i
            pub.publish(msg)
        print(f"published {frames} frames", flush=True)
        rclpy.spin(node)  # stay up until the test stops it
    '''
)


RELAY = textwrap.dedent(
    '''
    """Republishes every Localization from fix_in on fix_out, its confidence halved."""
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from vgssl_msgs.msg import Localization


    def make_node():
        node = rclpy.create_node("fix_relay")
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        pub = node.create_publisher(Localization, "fix_out", latched)

        def relay(msg):
            msg.confidence *= 0.5
            pub.publish(msg)

        node.create_subscription(Localization, "fix_in", relay, 10)
        return node


    run = rclpy.spin
    '''
)

# What every stand-in node above ends with: its source defines make_node() and run(node).
NODE_MAIN = textwrap.dedent(
    '''

    from rclpy._rclpy_pybind11 import RCLError
    from rclpy.executors import ExternalShutdownException


    def main():
        rclpy.init()
        node = make_node()
        try:
            run(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            return  # Ctrl-C (the test's SIGINT) is a clean exit (finally still cleans up)
        except RCLError:  # the signal shut the context down while spin built its wait set
            if rclpy.ok():
                raise
        finally:
            node.destroy_node()
            rclpy.try_shutdown()


    if __name__ == "__main__":
        main()
    '''
)


def write_module(folder: Path, name: str, source: str) -> Path:
    """``folder/name.py``: a stand-in node's ``source`` and the ``main()`` they share."""
    (folder / f"{name}.py").write_text(source + NODE_MAIN)
    return folder


def test_localize_image_service_between_processes(tmp_path, start_node, ros_node):
    server = start_node(
        "fake_localizer_server", "-p", "top_k:=4", pythonpath=[write_module(tmp_path, "fake_localizer_server", SERVER)]
    )
    server.wait_for_output("fake localizer ready")

    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[...] = (30, 60, 90)
    step, data = encode_raw(rgb, "bgr8")
    request = LocalizeImage.Request(image=Image(height=6, width=8, encoding="bgr8", step=step, data=data))
    request.image.header.stamp.sec = 42
    response = ros_node.call(LocalizeImage, "localize_image", request)
    assert response.success, response.message
    assert response.message == "8x6 mean rgb [30, 60, 90]"
    assert response.localization.header.stamp.sec == 42
    assert response.localization.header.frame_id == "utm"
    assert (response.localization.easting, response.localization.northing) == (396030.0, 4991090.0)
    assert [m.image_id for m in response.localization.matches] == ["db_0", "db_1", "db_2", "db_3"]  # -p top_k:=4

    compressed = LocalizeImage.Request(use_compressed=True, top_k=2)
    compressed.compressed_image.format = "png"
    compressed.compressed_image.data = encode_compressed(rgb, "png")
    response = ros_node.call(LocalizeImage, "localize_image", compressed)
    assert response.success and response.message == "8x6 mean rgb [30, 60, 90]"
    assert len(response.localization.matches) == 2

    broken = LocalizeImage.Request(image=Image(height=6, width=8, encoding="yuv422", step=16, data=bytes(96)))
    response = ros_node.call(LocalizeImage, "localize_image", broken)
    assert not response.success and "unsupported image encoding 'yuv422'" in response.message

    assert server.is_running()
    # Not asserted: the stand-in is test code, and once in ~10 full-suite runs on CI its process
    # hung in rclpy/Fast DDS teardown after SIGINT (killed after 10 s). The clean Ctrl-C exit of
    # the project's own nodes is asserted in test_localizer_node.py and test_bag_replay.py.
    server.stop()


def test_camera_frames_all_arrive_with_the_shipped_profile(tmp_path, start_node, ros_node):
    """640x480 rgb8 at 20 Hz between processes: the built-in transports lose many of these."""
    frames = 40
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
    inbox = ros_node.subscribe(Image, "camera/image_raw", qos)
    source = start_node(
        "image_source", "-p", f"frames:={frames}", "-p", "rate:=20.0",
        pythonpath=[write_module(tmp_path, "image_source", IMAGE_PUBLISHER)],
    )
    ros_node.wait_for_publishers("camera/image_raw")
    ros_node.spin_until(lambda: "published" in source.output(), timeout=30.0, what="the source to finish")
    ros_node.spin_for(0.5)
    print(f"{len(inbox)}/{frames} frames arrived")
    assert len(inbox) >= 0.95 * frames, f"only {len(inbox)}/{frames} frames arrived"
    assert all(len(m.data) == 640 * 480 * 3 and m.encoding == "rgb8" for m in inbox)
    assert [m.header.stamp.sec for m in inbox] == sorted(m.header.stamp.sec for m in inbox)


def test_localization_messages_cross_processes_on_topics(tmp_path, start_node, ros_node):
    relay = start_node("fix_relay", pythonpath=[write_module(tmp_path, "fix_relay", RELAY)])
    latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    inbox = ros_node.subscribe(Localization, "fix_out", latched)
    publisher = ros_node.node.create_publisher(Localization, "fix_in", 10)
    ros_node.wait_for_subscribers(publisher)
    sent = []
    for i in range(3):
        msg = make_localization()
        msg.header.stamp.sec = 100 + i
        publisher.publish(msg)
        sent.append(msg)
    received = ros_node.wait_for_messages(inbox, 3)
    assert [m.header.stamp.sec for m in received] == [100, 101, 102]
    assert all(m.confidence == 0.375 for m in received)  # 0.75 halved by the relay
    assert received[0].matches == sent[0].matches
    assert relay.stop() == 0
