"""The command modules; each owns one area of the CLI and adds its commands in `register(app)`."""

from edge_cli import bundle, compress, data, device, evaluate, export, fleet, robot

REGISTRARS = [
    data.register,
    compress.register,
    export.register,
    evaluate.register,
    bundle.register,
    device.register,
    fleet.register,
    robot.register,
]
