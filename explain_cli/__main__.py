from explain_cli.cli import main

main()
