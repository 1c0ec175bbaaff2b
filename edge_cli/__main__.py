from edge_cli import main

main()
