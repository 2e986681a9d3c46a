from explain_cli.cli.main import main

main()
